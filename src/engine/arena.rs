//! Where tensors live. Every role of a parameter group (parameters, gradients, each optimizer
//! state) is one flat arena with the same layout: tensor after tensor, each starting at a
//! multiple of 4 elements so that every load and store can be a `vec4` (of 256 with q8 states,
//! so that each tensor's quantization blocks are whole blocks of the arena). The arena is
//! cut into segments of at most `max_segment_elems` elements, one GPU buffer per segment and role,
//! so that any size fits the device's binding and buffer limits; a tensor may straddle segments.
//! Within a segment, indices fit in u32; offsets across the arena are u64.

use std::ops::Range;

/// Tensors start at multiples of this many elements (one `vec4`) in groups without q8 states.
pub const ALIGN_ELEMS: u64 = 4;

/// The layout shared by every role of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaLayout {
    /// Element offset of each tensor in the arena.
    pub offsets: Vec<u64>,
    /// Length of each tensor in elements.
    pub lens: Vec<u64>,
    /// Length of every segment but the last (a multiple of the alignment).
    pub segment_elems: u64,
    /// Element range of each segment in the arena.
    pub segments: Vec<Range<u64>>,
}

/// A run of one tensor that lies in one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub segment: usize,
    /// First element within the segment.
    pub segment_offset: u64,
    /// First element within the tensor.
    pub tensor_offset: u64,
    pub len: u64,
}

impl ArenaLayout {
    /// Lays out tensors of the given lengths, each from a multiple of `align` elements (a
    /// multiple of 4), in segments of at most `max_segment_elems` elements (rounded down to a
    /// multiple of `align`).
    pub fn new(lens: &[u64], max_segment_elems: u64, align: u64) -> Self {
        debug_assert!(align.is_multiple_of(4));
        let segment_elems = max_segment_elems / align * align;
        assert!(
            segment_elems > 0,
            "segments must hold at least {align} elements"
        );
        let mut offsets = Vec::with_capacity(lens.len());
        let mut total = 0u64;
        for &len in lens {
            offsets.push(total);
            total += len.next_multiple_of(align);
        }
        let segments = (0..total.div_ceil(segment_elems))
            .map(|s| s * segment_elems..((s + 1) * segment_elems).min(total))
            .collect();
        Self {
            offsets,
            lens: lens.to_vec(),
            segment_elems,
            segments,
        }
    }

    /// Elements in the arena, padding included.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.end)
    }

    /// The pieces that hold elements `range` of tensor `tensor`, in order.
    pub fn pieces(&self, tensor: usize, range: Range<u64>) -> Vec<Piece> {
        assert!(
            range.end <= self.lens[tensor],
            "range past the tensor's end"
        );
        let base = self.offsets[tensor];
        let mut pieces = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let global = base + at;
            let segment = (global / self.segment_elems) as usize;
            let segment_offset = global - self.segments[segment].start;
            let len = (range.end - at).min(self.segments[segment].end - global);
            pieces.push(Piece {
                segment,
                segment_offset,
                tensor_offset: at,
                len,
            });
            at += len;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_padded_to_vec4_and_segments_tile_the_arena() {
        let layout = ArenaLayout::new(&[1, 3, 4, 5, 257], 64, 4);
        assert_eq!(layout.offsets, vec![0, 4, 8, 12, 20]);
        assert_eq!(layout.total(), 20 + 260);
        assert_eq!(layout.segments.first(), Some(&(0..64)));
        assert_eq!(layout.segments.last(), Some(&(256..280)));
        for pair in layout.segments.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
    }

    #[test]
    fn pieces_cover_each_tensor_exactly_once() {
        let lens = [1u64, 3, 4, 5, 255, 256, 257, 1000];
        for max in [4u64, 8, 12, 64, 100, 1 << 20] {
            let layout = ArenaLayout::new(&lens, max, 4);
            for (t, &len) in lens.iter().enumerate() {
                let pieces = layout.pieces(t, 0..len);
                let mut next = 0;
                for p in &pieces {
                    assert_eq!(p.tensor_offset, next);
                    let seg = &layout.segments[p.segment];
                    assert!(seg.start + p.segment_offset + p.len <= seg.end);
                    assert_eq!(
                        seg.start + p.segment_offset,
                        layout.offsets[t] + p.tensor_offset
                    );
                    next += p.len;
                }
                assert_eq!(next, len, "tensor {t} with segments of {max}");
            }
        }
    }

    #[test]
    fn q8_alignment_keeps_blocks_whole() {
        let layout = ArenaLayout::new(&[1, 300, 256, 5], 1000, 256);
        assert_eq!(layout.offsets, vec![0, 256, 768, 1024]);
        assert_eq!(layout.segment_elems, 768);
        assert_eq!(layout.segments, vec![0..768, 768..1280]);
    }

    #[test]
    fn sub_ranges_start_where_asked() {
        let layout = ArenaLayout::new(&[10, 30], 8, 4);
        let pieces = layout.pieces(1, 5..20);
        assert_eq!(pieces[0].tensor_offset, 5);
        assert_eq!(pieces.iter().map(|p| p.len).sum::<u64>(), 15);
    }

    #[test]
    fn huge_arenas_keep_u64_offsets() {
        // 600 million elements in 2 GiB segments: offsets past 2^32 bytes stay exact.
        let layout = ArenaLayout::new(&[600_000_000, 5], (i32::MAX as u64) / 4, 4);
        assert_eq!(layout.segments.len(), 2);
        let last = layout.pieces(1, 0..5);
        assert_eq!(last.len(), 1);
        assert_eq!(
            layout.segments[last[0].segment].start + last[0].segment_offset,
            600_000_000
        );
    }
}
