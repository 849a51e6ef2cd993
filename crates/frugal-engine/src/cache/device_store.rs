//! The KV store on a compute device (candle's CUDA backend; the CPU too, for tests): keys and
//! values per (layer, KV head), each head with its own token positions, as in
//! [`super::KvStore`]. Rows are f32 (the exact reference format; the host store's f16 default is
//! not mirrored yet).
//!
//! Layout: one buffer per layer, `[n_kv_heads, capacity, head_dim]`, so head `g`'s rows are one
//! contiguous slab; attention reads every head of a layer with one batched matmul when the
//! heads hold the same positions (always so today: the device path only appends, to every head
//! at once), and one head at a time otherwise. Growth: a layer's buffer is allocated for exactly
//! the rows of its first call (a prefill knows its size) and doubles when a later call does not
//! fit, so decode appends in place ([`Tensor::slice_set`]) instead of copying the cache each
//! token.

use super::KvLayout;
use crate::error::{EngineError, Result};
use candle_core::{DType, Device, Tensor};

/// Smallest number of rows a layer's buffer grows to, so the first decode steps do not
/// reallocate.
const MIN_ROWS: usize = 64;

/// One layer's heads on the device.
#[derive(Debug)]
struct DeviceLayer {
    /// `[n_kv_heads, capacity, head_dim]`; rows `0..len` of every head are filled.
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: usize,
    /// Each head's token positions, ascending.
    positions: Vec<Vec<u32>>,
}

impl DeviceLayer {
    fn new(n_kv_heads: usize) -> Self {
        DeviceLayer {
            keys: None,
            values: None,
            len: 0,
            positions: vec![Vec::new(); n_kv_heads],
        }
    }

    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[1])
    }
}

/// Per-(layer, KV head) keys, values and positions on one device.
#[derive(Debug)]
pub struct DeviceKvStore {
    layout: KvLayout,
    device: Device,
    layers: Vec<DeviceLayer>,
}

impl DeviceKvStore {
    pub fn new(layout: KvLayout, device: Device) -> Self {
        DeviceKvStore {
            layout,
            device,
            layers: (0..layout.n_layers)
                .map(|_| DeviceLayer::new(layout.n_kv_heads))
                .collect(),
        }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Token positions `kv_head` of `layer` holds, ascending.
    pub fn positions(&self, layer: usize, kv_head: usize) -> &[u32] {
        &self.layers[layer].positions[kv_head]
    }

    /// The positions every head of `layer` holds, when they are the same for all heads.
    pub fn shared_positions(&self, layer: usize) -> Option<&[u32]> {
        let p = &self.layers[layer].positions;
        let first = p.first()?;
        p.iter().all(|h| h == first).then_some(first.as_slice())
    }

    /// Keys of rows `start..end` of every head of `layer`: `[n_kv_heads, end - start, head_dim]`,
    /// a view of the buffer.
    pub fn keys(&self, layer: usize, start: usize, end: usize) -> Result<Tensor> {
        rows(&self.layers[layer].keys, start, end)
    }

    /// Values, as [`DeviceKvStore::keys`].
    pub fn values(&self, layer: usize, start: usize, end: usize) -> Result<Tensor> {
        rows(&self.layers[layer].values, start, end)
    }

    /// Appends a layer's new K/V, `[n_kv_heads, T, head_dim]` on the store's device, at
    /// `positions` (after every position the layer holds) to every head.
    pub fn append_layer(
        &mut self,
        layer: usize,
        positions: &[u32],
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let (n_kv, t, d) = k.dims3()?;
        let l = &mut self.layers[layer];
        if l.positions.iter().any(|p| p.len() != l.len) {
            return Err(EngineError::Internal(
                "device KV store: heads of a layer hold different rows".into(),
            ));
        }
        debug_assert!(
            l.positions[0]
                .last()
                .zip(positions.first())
                .is_none_or(|(a, b)| a < b),
            "positions must stay ascending"
        );
        let len = l.len;
        if len + t > l.capacity() {
            let cap = match len {
                0 => t.max(MIN_ROWS),
                _ => (len + t).max(2 * l.capacity()),
            };
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let new = Tensor::zeros((n_kv, cap, d), DType::F32, k.device())?;
                if let Some(old) = old.as_ref().filter(|_| len > 0) {
                    new.slice_set(&old.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                Ok(new)
            };
            l.keys = Some(grow(&l.keys)?);
            l.values = Some(grow(&l.values)?);
        }
        let put = |buf: &Option<Tensor>, src: &Tensor| -> Result<()> {
            let buf = buf.as_ref().expect("allocated above");
            Ok(buf.slice_set(&src.to_dtype(DType::F32)?.contiguous()?, 1, len)?)
        };
        put(&l.keys, k)?;
        put(&l.values, v)?;
        l.len += t;
        l.positions
            .iter_mut()
            .for_each(|p| p.extend_from_slice(positions));
        Ok(())
    }

    /// Bytes of the rows held (f32 keys and values, and u32 positions), counted as
    /// [`super::KvStore::resident_bytes`] counts them.
    pub fn resident_bytes(&self) -> usize {
        let d = self.layout.head_dim;
        self.layers
            .iter()
            .flat_map(|l| &l.positions)
            .map(|p| p.len() * (2 * d * 4 + 4))
            .sum()
    }

    /// Device bytes allocated for rows, including growth headroom not yet filled, plus the
    /// positions' host memory.
    pub fn allocated_bytes(&self) -> usize {
        let (n_kv, d) = (self.layout.n_kv_heads, self.layout.head_dim);
        self.layers
            .iter()
            .map(|l| {
                l.capacity() * n_kv * 2 * d * 4
                    + l.positions.iter().map(|p| p.capacity() * 4).sum::<usize>()
            })
            .sum()
    }

    /// Drops every row and frees the device buffers.
    pub fn clear(&mut self) {
        let n_kv = self.layout.n_kv_heads;
        self.layers
            .iter_mut()
            .for_each(|l| *l = DeviceLayer::new(n_kv));
    }
}

fn rows(buf: &Option<Tensor>, start: usize, end: usize) -> Result<Tensor> {
    let buf = buf
        .as_ref()
        .ok_or_else(|| EngineError::Internal("read from an empty device KV layer".into()))?;
    Ok(buf.narrow(1, start, end - start)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::KvDtype;

    #[test]
    fn rows_land_per_head_and_survive_growth() {
        let layout = KvLayout {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 3,
            dtype: KvDtype::default(),
        };
        let dev = Device::Cpu;
        let mut store = DeviceKvStore::new(layout, dev.clone());
        // value = 100*token + 10*head + dim, laid out [head, token, dim].
        let kv = |tokens: std::ops::Range<u32>| {
            let data: Vec<f32> = (0..2u32)
                .flat_map(|g| {
                    tokens
                        .clone()
                        .flat_map(move |t| (0..3u32).map(move |i| (100 * t + 10 * g + i) as f32))
                })
                .collect();
            Tensor::from_vec(data, (2, tokens.len(), 3), &dev).unwrap()
        };
        let neg = |t: Tensor| t.neg().unwrap();
        store
            .append_layer(1, &[0, 1], &kv(0..2), &neg(kv(0..2)))
            .unwrap();
        // 70 more single tokens: past MIN_ROWS, so the buffer grows at least once.
        for t in 2..72u32 {
            store
                .append_layer(1, &[t], &kv(t..t + 1), &neg(kv(t..t + 1)))
                .unwrap();
        }
        assert_eq!(store.positions(1, 1).len(), 72);
        assert_eq!(store.shared_positions(1).map(<[u32]>::len), Some(72));
        let k = store.keys(1, 0, 72).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(k[1][0], vec![10.0, 11.0, 12.0]);
        assert_eq!(k[1][71], vec![7110.0, 7111.0, 7112.0]);
        assert_eq!(k[0][71], vec![7100.0, 7101.0, 7102.0]);
        let v = store.values(1, 70, 72).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(v[1][1], vec![-7110.0, -7111.0, -7112.0]);
        assert_eq!(store.positions(1, 0)[71], 71);
        assert!(store.positions(0, 0).is_empty(), "other layers untouched");
        assert_eq!(store.resident_bytes(), 2 * 72 * (2 * 3 * 4 + 4));
        assert!(store.allocated_bytes() >= store.resident_bytes() - 2 * 72 * 4);
        store.clear();
        assert_eq!(store.resident_bytes(), 0);
        assert_eq!(store.allocated_bytes(), 0);
    }
}
