//! The parallel task grid: row blocks of whole panels by column chunks.

use super::*;

/// The tasks over C: blocks of at most MC rows times chunks of column panels, about four
/// tasks per thread.
#[derive(Clone, Copy, Debug)]
pub(super) struct TaskGrid {
    m: usize,
    m_panels: usize,
    m_blocks: usize,
    n_panels: usize,
    n_chunks: usize,
    panels_per_chunk: usize,
}

impl TaskGrid {
    /// Row blocks of whole MR panels, as even as the panels allow, and as many as a multiple
    /// of the threads once there are at least as many as threads: a 2048-row product on 2
    /// threads has 30 blocks of 11-12 panels rather than 28 of 72 rows and one of 32, so
    /// neither thread waits for the other's extra block. Which task computes an element of
    /// C does not change its sum, so the bits are those of any other grid.
    pub(super) fn new(m: usize, n_panels: usize, threads: usize, isa: Isa) -> Self {
        let m_panels = m.div_ceil(MR);
        let mut m_blocks = m.div_ceil(MC);
        if m_blocks >= threads {
            m_blocks = m_blocks.div_ceil(threads) * threads;
        }
        let m_blocks = m_blocks.min(m_panels);
        let n_chunks = (4 * threads).div_ceil(m_blocks).clamp(1, n_panels);
        let mut panels_per_chunk = n_panels.div_ceil(n_chunks);
        if isa == Isa::Avx512 && n_panels > 1 {
            panels_per_chunk += panels_per_chunk % 2; // whole pairs (see `panel_steps`)
        }
        TaskGrid {
            m,
            m_panels,
            m_blocks,
            n_panels,
            n_chunks: n_panels.div_ceil(panels_per_chunk),
            panels_per_chunk,
        }
    }

    pub(super) fn tasks(&self) -> usize {
        self.m_blocks * self.n_chunks
    }

    /// Rows `i0..i1` (i0 a multiple of MR) and column panels `jp0..jp1` of `task`.
    pub(super) fn task(&self, task: usize) -> (usize, usize, usize, usize) {
        let (mb, nb) = (task / self.n_chunks, task % self.n_chunks);
        let i0 = mb * self.m_panels / self.m_blocks * MR;
        let i1 = ((mb + 1) * self.m_panels / self.m_blocks * MR).min(self.m);
        let jp0 = nb * self.panels_per_chunk;
        (
            i0,
            i1,
            jp0,
            (jp0 + self.panels_per_chunk).min(self.n_panels),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_grid_tiles_c_once_in_whole_panels_and_even_blocks() {
        for threads in 1..=5 {
            for m in (1..700).chain([2048, 4096, 4097]) {
                for (n_panels, isa) in [1, 4, 7, 63]
                    .into_iter()
                    .flat_map(|p| [(p, Isa::Avx2Fma), (p, Isa::Avx512)])
                {
                    let g = TaskGrid::new(m, n_panels, threads, isa);
                    let mut seen = vec![0u8; m * n_panels];
                    let mut sizes = Vec::new();
                    for t in 0..g.tasks() {
                        let (i0, i1, jp0, jp1) = g.task(t);
                        assert!(
                            i0 % MR == 0 && i0 < i1 && i1 - i0 <= MC,
                            "m {m}: rows {i0}..{i1}"
                        );
                        assert!(jp0 < jp1 && jp1 <= n_panels);
                        // AVX-512: chunks of whole pairs of panels
                        assert!(isa != Isa::Avx512 || jp0 % 2 == 0, "chunk at {jp0}");
                        if jp0 == 0 {
                            sizes.push(i1.div_ceil(MR) - i0 / MR);
                        }
                        for i in i0..i1 {
                            for jp in jp0..jp1 {
                                seen[i * n_panels + jp] += 1;
                            }
                        }
                    }
                    assert!(
                        seen.iter().all(|&s| s == 1),
                        "m {m} panels {n_panels} threads {threads}"
                    );
                    // row blocks differ by at most one panel (the last may be a partial one)
                    let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                    assert!(hi - lo <= 1, "m {m}: block sizes {lo}..{hi}");
                    if m.div_ceil(MC) >= threads {
                        assert_eq!(g.m_blocks % threads, 0, "m {m} threads {threads}");
                    }
                }
            }
        }
    }
}
