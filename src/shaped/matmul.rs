//! Batched matrix products on the GPU (`shaders/matmul.wgsl`): `out = alpha·op(A)·op(B) +
//! beta·D` for any number of products of any shapes in one dispatch, every matrix in one
//! storage buffer. Muon's Newton–Schulz iteration runs on it; the bench compares its tiled
//! kernel with a naive one in GFLOP/s.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{BindingKind, shader_struct};

/// The matrix-product kernels, before the tiled kernel's body is written in.
const MATMUL_TEMPLATE: &str = include_str!("../../shaders/matmul.wgsl");

/// The matrix-product kernels' WGSL: `shaders/matmul.wgsl` with the tiled kernel's body per
/// tile of k written out, every inner loop unrolled (see the comment there).
pub fn matmul_source() -> String {
    let mut body = String::new();
    // Stage the tiles: four values of each per invocation.
    for r in 0..4 {
        body += &format!(
            "        tile_a[local + {o}u] = load_a(p, row0 + (local + {o}u) / TILE_K, l0 + (local + {o}u) % TILE_K);\n\
             \x20       tile_b[local + {o}u] = load_b(p, l0 + (local + {o}u) / TILE, col0 + (local + {o}u) % TILE);\n",
            o = r * 256
        );
    }
    body += "        workgroupBarrier();\n";
    // Each tile's 16 terms summed apart, then added to the total: the rounding error of a
    // long inner dimension grows with k/16 + 16 additions instead of k.
    body += "        var tile_sum: array<f32, 16>;\n";
    for l in 0..16 {
        for r in 0..4 {
            body += &format!(
                "        let a{l}_{r} = tile_a[(lid.y + {}u) * TILE_K + {l}u];\n",
                16 * r
            );
        }
        for c in 0..4 {
            body += &format!(
                "        let b{l}_{c} = tile_b[{}u + lid.x + {}u];\n",
                l * 64,
                16 * c
            );
            for r in 0..4 {
                let o = r * 4 + c;
                body +=
                    &format!("        tile_sum[{o}] = fma(a{l}_{r}, b{l}_{c}, tile_sum[{o}]);\n");
            }
        }
    }
    for o in 0..16 {
        body += &format!("        acc[{o}] += tile_sum[{o}];\n");
    }
    body += "        workgroupBarrier();\n";
    // The outputs, also unrolled: indexing `acc` by a variable would keep it in memory
    // instead of registers.
    let mut store = String::new();
    for r in 0..4 {
        for c in 0..4 {
            store += &format!(
                "    store_out(p, row0 + lid.y + {}u, col0 + lid.x + {}u, acc[{}]);\n",
                16 * r,
                16 * c,
                r * 4 + c
            );
        }
    }
    MATMUL_TEMPLATE
        .replace("        // TILE_BODY\n", &body)
        .replace("    // STORE_BODY\n", &store)
}

const BINDINGS: [BindingKind; 2] = [
    BindingKind::Storage { read_only: true },
    BindingKind::Storage { read_only: false },
];

/// Output rows and columns one workgroup of the tiled kernel computes.
const TILE: u32 = 64;
/// Terms of k per iteration of the tiled kernel's loop.
const TILE_K: u32 = 16;
/// Output rows and columns one workgroup of the naive kernel computes.
const NAIVE_TILE: u32 = 16;

shader_struct! {
    /// One product of a batch, as the WGSL `Product`: `out (m×n) = alpha·op(A)·op(B) +
    /// beta·D`, positions in elements of the matrices' buffer, every matrix row-major.
    pub struct Product {
        /// Rows of the output.
        pub m: u32,
        /// Columns of the output.
        pub n: u32,
        /// The inner dimension.
        pub k: u32,
        /// First element of A (m×k, or k×m read transposed).
        pub a: u32,
        /// First element of B (k×n, or n×k read transposed).
        pub b: u32,
        /// First element of D (m×n), read only when `beta` is not 0.
        pub d: u32,
        /// First element of the output; it must not overlap A, B or D.
        pub out: u32,
        /// 1: A is stored k×m and read transposed.
        pub a_transposed: u32,
        /// 1: B is stored n×k and read transposed.
        pub b_transposed: u32,
        /// Scales the product.
        pub alpha: f32,
        /// Scales D.
        pub beta: f32,
        /// Padding to the WGSL struct's size.
        pub _pad: u32,
    }
}

impl Product {
    /// The elements of the matrices' buffer this product reads and writes end before this.
    fn end(&self) -> u64 {
        let (m, n, k) = (self.m as u64, self.n as u64, self.k as u64);
        let mut end = (self.a as u64 + m * k)
            .max(self.b as u64 + k * n)
            .max(self.out as u64 + m * n);
        if self.beta != 0.0 {
            end = end.max(self.d as u64 + m * n);
        }
        end
    }

    /// Floating-point operations of the product (a multiply and an add per term).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

/// Which kernel computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// 64×64 output tiles from operand tiles in workgroup memory, 4×4 outputs per invocation.
    Tiled,
    /// One invocation per output, operands read from memory.
    Naive,
}

/// A batch of products, uploaded once, recorded into any number of passes.
#[derive(Debug)]
pub struct ProductBatch {
    table: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    pipeline: wgpu::ComputePipeline,
    workgroups: (u32, u32, u32),
    flops: f64,
}

impl ProductBatch {
    /// The batch `products` over the matrices in `mats` (float32), computed by `kernel`.
    /// Every product must lie within `mats`, and there must be at most as many products as
    /// one dispatch dimension allows.
    pub fn new(
        ctx: &GpuContext,
        mats: &wgpu::Buffer,
        products: &[Product],
        kernel: MatmulKernel,
    ) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig {
            optimizer: "matrix products",
            reason,
        };
        if products.is_empty() {
            return Err(invalid("a batch needs at least one product".into()));
        }
        let max_dim = ctx.limits.max_compute_workgroups_per_dimension;
        if products.len() > max_dim as usize {
            return Err(invalid(format!(
                "{} products in one batch, more than the {max_dim} one dispatch allows",
                products.len()
            )));
        }
        let elements = mats.size() / 4;
        // Loop iterations one invocation makes: a tile of k per iteration (tiled), a term
        // (naive).
        let (per_iteration, name) = match kernel {
            MatmulKernel::Tiled => (TILE_K, "tiled"),
            MatmulKernel::Naive => (1, "naive"),
        };
        for (i, p) in products.iter().enumerate() {
            if let Some(limit) = ctx.loop_limit()
                && p.k.div_ceil(per_iteration) as u64 > limit
            {
                return Err(invalid(format!(
                    "product {i}'s inner dimension {} is longer than the {name} kernel can \
                     sum on this adapter ({}), which ends every loop after {limit} iterations",
                    p.k,
                    limit * per_iteration as u64
                )));
            }
            if p.m == 0 || p.n == 0 || p.k == 0 {
                return Err(invalid(format!(
                    "product {i} has an empty dimension: {p:?}"
                )));
            }
            if p.end() > elements {
                return Err(invalid(format!(
                    "product {i} reaches element {} of a buffer of {elements}",
                    p.end()
                )));
            }
        }
        let (entry, tile) = match kernel {
            MatmulKernel::Tiled => ("tiled", TILE),
            MatmulKernel::Naive => ("naive", NAIVE_TILE),
        };
        let max_m = products.iter().map(|p| p.m).max().unwrap_or(1);
        let max_n = products.iter().map(|p| p.n).max().unwrap_or(1);
        let workgroups = (
            max_n.div_ceil(tile),
            max_m.div_ceil(tile),
            products.len() as u32,
        );
        if workgroups.0 > max_dim || workgroups.1 > max_dim {
            return Err(invalid(format!(
                "a {max_m}×{max_n} output needs more than {max_dim} workgroups in one dimension"
            )));
        }
        let table = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("matrix products"),
            size: std::mem::size_of_val(products) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue
            .write_buffer(&table, 0, bytemuck::cast_slice(products));
        let pipeline =
            ctx.kernels
                .entry_pipeline(&ctx.device, "matmul", &BINDINGS, entry, &[], matmul_source);
        let layout = ctx.kernels.entry_layout(&ctx.device, "matmul", &BINDINGS);
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matrix products"),
            layout: &layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: table.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: mats.as_entire_binding(),
                },
            ],
        });
        Ok(Self {
            table,
            bind_group,
            pipeline,
            workgroups,
            flops: products.iter().map(Product::flops).sum(),
        })
    }

    /// Records the batch into `pass`.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let (x, y, z) = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }

    /// Floating-point operations of the whole batch.
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// The table's buffer (kept alive with the batch).
    pub fn table(&self) -> &wgpu::Buffer {
        &self.table
    }
}

/// `out = alpha·op(A)·op(B) + beta·D` in float64 on the host, as the kernels compute it: the
/// reference of one product over the matrices in `mats`.
pub fn reference_product(mats: &mut [f64], p: &Product) {
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let a = |i: usize, l: usize| {
        if p.a_transposed != 0 {
            mats[p.a as usize + l * m + i]
        } else {
            mats[p.a as usize + i * k + l]
        }
    };
    let b = |l: usize, j: usize| {
        if p.b_transposed != 0 {
            mats[p.b as usize + j * k + l]
        } else {
            mats[p.b as usize + l * n + j]
        }
    };
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let sum: f64 = (0..k).map(|l| a(i, l) * b(l, j)).sum();
            let mut value = p.alpha as f64 * sum;
            if p.beta != 0.0 {
                value += p.beta as f64 * mats[p.d as usize + i * n + j];
            }
            out[i * n + j] = value;
        }
    }
    mats[p.out as usize..p.out as usize + m * n].copy_from_slice(&out);
}
