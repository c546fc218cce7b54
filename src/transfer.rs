//! Moving f32 data between the host and GPU buffers (for the engine, the random fill and the
//! bench, below all three), in bounded chunks so that a 2.4 GB tensor
//! never needs a 2.4 GB staging buffer (which `max_buffer_size` may forbid anyway).

use crate::context::GpuContext;
use crate::error::{Error, Result};

/// The most bytes staged by one copy.
const CHUNK_BYTES: u64 = 64 << 20;

/// Staged uploads are flushed (submitted and waited for) once this many bytes are pending.
const FLUSH_BYTES: u64 = 512 << 20;

/// `len` f32 elements of `buffer` from byte `offset`: what a segment binds for one role, and
/// what the copies below move. (A `wgpu::Buffer` is a shared handle: a view holds its own.)
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub len: u64,
}

impl View {
    /// All of `buffer`.
    pub(crate) fn whole(buffer: &wgpu::Buffer) -> Self {
        Self {
            buffer: buffer.clone(),
            offset: 0,
            len: buffer.size() / 4,
        }
    }

    /// `len` elements of this view from its element `first`.
    pub(crate) fn part(&self, first: u64, len: u64) -> Self {
        debug_assert!(first + len <= self.len);
        Self {
            buffer: self.buffer.clone(),
            offset: self.offset + first * 4,
            len,
        }
    }

    /// The view as a bind group entry's resource.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.len * 4),
        })
    }
}

/// Splits views into pieces of at most `max_elems` elements.
fn chunks(views: &[View], max_elems: u64) -> impl Iterator<Item = View> + '_ {
    views.iter().flat_map(move |v| {
        (0..v.len.div_ceil(max_elems)).map(move |c| {
            let first = c * max_elems;
            v.part(first, (v.len - first).min(max_elems))
        })
    })
}

/// Writes `data` into the spans, in order. `data.len()` must equal the spans' total length.
pub(crate) fn write(ctx: &GpuContext, spans: &[View], data: &[f32]) -> Result<()> {
    debug_assert_eq!(spans.iter().map(|s| s.len).sum::<u64>(), data.len() as u64);
    let mut at = 0usize;
    let mut pending = 0u64;
    for span in chunks(spans, CHUNK_BYTES / 4) {
        let values = &data[at..at + span.len as usize];
        ctx.queue
            .write_buffer(&span.buffer, span.offset, bytemuck::cast_slice(values));
        at += span.len as usize;
        pending += span.len * 4;
        if pending >= FLUSH_BYTES {
            ctx.queue.submit([]);
            ctx.wait()?;
            pending = 0;
        }
    }
    Ok(())
}

/// Writes `value` into every element of the spans.
pub(crate) fn fill(ctx: &GpuContext, spans: &[View], value: f32) -> Result<()> {
    let max = CHUNK_BYTES / 4;
    let longest = spans.iter().map(|s| s.len).max().unwrap_or(0).min(max);
    let block = vec![value; longest as usize];
    let mut pending = 0u64;
    for span in chunks(spans, max) {
        ctx.queue.write_buffer(
            &span.buffer,
            span.offset,
            bytemuck::cast_slice(&block[..span.len as usize]),
        );
        pending += span.len * 4;
        if pending >= FLUSH_BYTES {
            ctx.queue.submit([]);
            ctx.wait()?;
            pending = 0;
        }
    }
    Ok(())
}

/// Reads the spans back, in order, waiting for the GPU.
pub(crate) fn read(ctx: &GpuContext, spans: &[View]) -> Result<Vec<f32>> {
    let total: u64 = spans.iter().map(|s| s.len).sum();
    let mut out = Vec::with_capacity(total as usize);
    if total == 0 {
        return Ok(out);
    }
    let staging_bytes = (total * 4)
        .min(CHUNK_BYTES)
        .min(ctx.limits.max_buffer_size / 4 * 4);
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback staging"),
        size: staging_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let pieces: Vec<View> = chunks(spans, staging_bytes / 4).collect();
    let mut next = 0;
    while next < pieces.len() {
        // Batch as many pieces as fit in the staging buffer into one copy-and-map round.
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut filled = 0u64;
        while next < pieces.len() && filled + pieces[next].len * 4 <= staging_bytes {
            let p = &pieces[next];
            encoder.copy_buffer_to_buffer(&p.buffer, p.offset, &staging, filled, p.len * 4);
            filled += p.len * 4;
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
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Wait(e.to_string()))?;
            out.extend_from_slice(bytemuck::cast_slice(&view));
        }
        staging.unmap();
    }
    Ok(out)
}
