//! Moving values between the host and GPU buffers (for the engine, the random fill and the
//! bench, below all three), in bounded chunks so that a 2.4 GB tensor never needs a 2.4 GB
//! staging buffer (which `max_buffer_size` may forbid anyway). The host side is always float32;
//! each view's [`Format`] says how its values are stored (16-bit values are rounded to nearest
//! even on the way in and widened exactly on the way out).

use std::borrow::Cow;

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::storage::Format;

/// The most bytes staged by one copy.
const CHUNK_BYTES: u64 = 64 << 20;

/// Staged uploads are flushed (submitted and waited for) once this many bytes are pending.
const FLUSH_BYTES: u64 = 512 << 20;

/// `len` values of `buffer` from byte `offset`, stored in `format`: what a segment binds for
/// one role, and what the copies below move. (A `wgpu::Buffer` is a shared handle: a view holds
/// its own.)
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub len: u64,
    pub format: Format,
}

impl View {
    /// All of `buffer`, as float32 values.
    pub(crate) fn whole(buffer: &wgpu::Buffer) -> Self {
        Self {
            buffer: buffer.clone(),
            offset: 0,
            len: buffer.size() / 4,
            format: Format::F32,
        }
    }

    /// `len` values of this view from its value `first`.
    pub(crate) fn part(&self, first: u64, len: u64) -> Self {
        debug_assert!(first + len <= self.len);
        debug_assert!(
            self.format != Format::Q8,
            "a q8 view is a segment's codes and absmax"
        );
        Self {
            buffer: self.buffer.clone(),
            offset: self.offset + first * self.format.bytes(),
            len,
            format: self.format,
        }
    }

    /// Bytes the view covers (a q8 view: its codes, then one absmax per block).
    pub(crate) fn bytes(&self) -> u64 {
        self.format.buffer_bytes(self.len)
    }

    /// `words` 4-byte words from byte `byte` of the view's buffer, as raw float32 bits: how the
    /// host moves a q8 state's codes and absmax.
    pub(crate) fn words(&self, byte: u64, words: u64) -> Self {
        Self {
            buffer: self.buffer.clone(),
            offset: self.offset + byte,
            len: words,
            format: Format::F32,
        }
    }

    /// The view as a bind group entry's resource.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.bytes()),
        })
    }

    /// The view and the rest of its last vec4 (four values), as a bind group entry's resource:
    /// how the kernels bind the buffers that are ours (allocated with that padding), so that a
    /// tensor ending inside a vec4 still binds whole vec4s.
    pub(crate) fn padded_binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.format.buffer_bytes(self.len.next_multiple_of(4))),
        })
    }

    /// The smallest byte range around the view that copies may move (multiples of 4 bytes):
    /// `(start, end)`.
    fn aligned_bytes(&self) -> (u64, u64) {
        let align = wgpu::COPY_BUFFER_ALIGNMENT;
        let start = self.offset / align * align;
        let end = (self.offset + self.bytes()).div_ceil(align) * align;
        (start, end)
    }
}

/// Splits views into pieces of at most `max_elems` values.
fn chunks(views: &[View], max_elems: u64) -> impl Iterator<Item = View> + '_ {
    views.iter().flat_map(move |v| {
        (0..v.len.div_ceil(max_elems)).map(move |c| {
            let first = c * max_elems;
            v.part(first, (v.len - first).min(max_elems))
        })
    })
}

/// Writes `values` into one view. A 16-bit view that starts or ends inside a 4-byte word
/// (copies move whole words) keeps the other half of that word: it is read first.
fn write_view(ctx: &GpuContext, view: &View, values: &[f32]) -> Result<()> {
    let bytes = view.format.encode(values);
    let (start, end) = view.aligned_bytes();
    if start == view.offset && end == view.offset + bytes.len() as u64 {
        ctx.queue.write_buffer(&view.buffer, view.offset, &bytes);
        return Ok(());
    }
    let word = wgpu::COPY_BUFFER_ALIGNMENT;
    let mut merged = read_bytes(ctx, &view.buffer, start, start + word)?;
    if end - start > word {
        let tail = read_bytes(ctx, &view.buffer, end - word, end)?;
        merged.resize((end - start - word) as usize, 0);
        merged.extend_from_slice(&tail);
    }
    let at = (view.offset - start) as usize;
    merged[at..at + bytes.len()].copy_from_slice(&bytes);
    ctx.queue.write_buffer(&view.buffer, start, &merged);
    Ok(())
}

/// Writes every chunk of the views with the values `values` gives for it, in order, flushing
/// once [`FLUSH_BYTES`] are pending (the staging copies of `Queue::write_buffer` live until a
/// submit completes: one call must bound them, whatever the views add up to).
fn write_chunks<'a>(
    ctx: &GpuContext,
    spans: &[View],
    mut values: impl FnMut(&View) -> Cow<'a, [f32]>,
) -> Result<()> {
    let mut pending = 0u64;
    for span in chunks(spans, CHUNK_BYTES / 4) {
        write_view(ctx, &span, &values(&span))?;
        pending += span.bytes();
        if pending >= FLUSH_BYTES {
            ctx.queue.submit([]);
            ctx.wait()?;
            pending = 0;
        }
    }
    Ok(())
}

/// Writes `data` into the views, in order. `data.len()` must equal the views' total length.
pub(crate) fn write(ctx: &GpuContext, spans: &[View], data: &[f32]) -> Result<()> {
    debug_assert_eq!(spans.iter().map(|s| s.len).sum::<u64>(), data.len() as u64);
    let mut at = 0usize;
    write_chunks(ctx, spans, |span| {
        let values = &data[at..at + span.len as usize];
        at += span.len as usize;
        Cow::Borrowed(values)
    })
}

/// Writes `value(k)` into the views' `k`-th element (counting across the views, in order),
/// generated a chunk at a time.
pub(crate) fn write_generated(
    ctx: &GpuContext,
    spans: &[View],
    mut value: impl FnMut(u64) -> f32,
) -> Result<()> {
    let mut at = 0u64;
    write_chunks(ctx, spans, |span| {
        let values: Vec<f32> = (at..at + span.len).map(&mut value).collect();
        at += span.len;
        Cow::Owned(values)
    })
}

/// Writes `value` into every element of the views.
pub(crate) fn fill(ctx: &GpuContext, spans: &[View], value: f32) -> Result<()> {
    let longest = spans.iter().map(|s| s.len).max().unwrap_or(0);
    let block = vec![value; longest.min(CHUNK_BYTES / 4) as usize];
    write_chunks(ctx, spans, |span| {
        Cow::Borrowed(&block[..span.len as usize])
    })
}

/// Bytes `start..end` of `buffer` (multiples of 4), waiting for the GPU.
fn read_bytes(ctx: &GpuContext, buffer: &wgpu::Buffer, start: u64, end: u64) -> Result<Vec<u8>> {
    let view = View {
        buffer: buffer.clone(),
        offset: start,
        len: (end - start) / 4,
        format: Format::F32,
    };
    let words = read(ctx, &[view])?;
    Ok(bytemuck::cast_slice(&words).to_vec())
}

/// Reads the views back, in order, as float32 values, waiting for the GPU.
pub(crate) fn read(ctx: &GpuContext, spans: &[View]) -> Result<Vec<f32>> {
    let total: u64 = spans.iter().map(|s| s.len).sum();
    let mut out = Vec::with_capacity(total as usize);
    if total == 0 {
        return Ok(out);
    }
    // Each piece is copied with the whole words around it, 8 bytes at most more than its own.
    let staging_bytes = (total * 4 + 8)
        .min(CHUNK_BYTES + 8)
        .min(ctx.limits.max_buffer_size / 4 * 4);
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback staging"),
        size: staging_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let pieces: Vec<View> = chunks(spans, (staging_bytes - 8) / 4).collect();
    let mut next = 0;
    while next < pieces.len() {
        // Batch as many pieces as fit in the staging buffer into one copy-and-map round.
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut filled = 0u64;
        let mut batch = Vec::new();
        while next < pieces.len() {
            let p = &pieces[next];
            let (start, end) = p.aligned_bytes();
            if filled + (end - start) > staging_bytes {
                break;
            }
            encoder.copy_buffer_to_buffer(&p.buffer, start, &staging, filled, end - start);
            batch.push((filled + p.offset - start, p));
            filled += end - start;
            next += 1;
        }
        ctx.queue.submit([encoder.finish()]);
        let slice = staging.slice(..filled);
        let (sender, receiver) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        ctx.wait()?;
        receiver
            .recv()
            .map_err(|e| Error::Wait(e.to_string()))?
            .map_err(|e| Error::Wait(e.to_string()))?;
        {
            let mapped = slice
                .get_mapped_range()
                .map_err(|e| Error::Wait(e.to_string()))?;
            for (at, piece) in batch {
                let at = at as usize;
                let bytes = &mapped[at..at + piece.bytes() as usize];
                out.extend(piece.format.decode(bytes));
            }
        }
        staging.unmap();
    }
    Ok(out)
}
