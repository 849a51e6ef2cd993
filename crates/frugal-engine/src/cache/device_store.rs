//! The KV store on a compute device (candle's CUDA backend; the CPU too, for tests): the same
//! per-(layer, KV head) layout as [`super::KvStore`], each head with its own token positions, so
//! a head may hold tokens another head dropped. Rows are f32 (the exact reference format; the
//! host store's f16 default is not mirrored yet) in one growable device buffer per head.
//!
//! Growth: a head's buffer is allocated for exactly the rows of its first call (a prefill knows
//! its size) and doubles when a later call does not fit, so decode appends in place
//! ([`Tensor::slice_set`]) instead of copying the whole head every token.

use super::KvLayout;
use crate::error::Result;
use candle_core::{DType, Device, Tensor};

/// Smallest buffer a head grows to (rows), so the first decode steps do not reallocate.
const MIN_ROWS: usize = 64;

/// Keys, values and positions of one (layer, KV head) on the device.
#[derive(Debug)]
pub struct DeviceHead {
    /// `[capacity, head_dim]`; rows `0..positions.len()` are filled.
    keys: Option<Tensor>,
    values: Option<Tensor>,
    positions: Vec<u32>,
}

impl DeviceHead {
    fn new() -> Self {
        DeviceHead {
            keys: None,
            values: None,
            positions: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Token positions held, ascending.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[0])
    }

    /// Keys of rows `start..end` (`[end - start, head_dim]`, a view of the buffer).
    pub fn keys(&self, start: usize, end: usize) -> Result<Tensor> {
        rows(&self.keys, start, end)
    }

    /// Values of rows `start..end`.
    pub fn values(&self, start: usize, end: usize) -> Result<Tensor> {
        rows(&self.values, start, end)
    }

    /// Appends `keys`/`values` (`[T, head_dim]` f32 on the store's device) at `positions`,
    /// which must come after every position already held.
    fn push(&mut self, positions: &[u32], keys: &Tensor, values: &Tensor) -> Result<()> {
        debug_assert!(
            self.positions
                .last()
                .zip(positions.first())
                .is_none_or(|(a, b)| a < b),
            "positions must stay ascending"
        );
        let (t, d) = keys.dims2()?;
        let len = self.len();
        if len + t > self.capacity() {
            let cap = if len == 0 {
                t.max(MIN_ROWS)
            } else {
                (len + t).max(2 * self.capacity())
            };
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let new = Tensor::zeros((cap, d), DType::F32, keys.device())?;
                if let Some(old) = old.as_ref().filter(|_| len > 0) {
                    new.slice_set(&old.narrow(0, 0, len)?, 0, 0)?;
                }
                Ok(new)
            };
            self.keys = Some(grow(&self.keys)?);
            self.values = Some(grow(&self.values)?);
        }
        let put = |buf: &Option<Tensor>, src: &Tensor| -> Result<()> {
            let buf = buf.as_ref().expect("allocated above");
            Ok(buf.slice_set(&src.to_dtype(DType::F32)?.contiguous()?, 0, len)?)
        };
        put(&self.keys, keys)?;
        put(&self.values, values)?;
        self.positions.extend_from_slice(positions);
        Ok(())
    }
}

fn rows(buf: &Option<Tensor>, start: usize, end: usize) -> Result<Tensor> {
    let buf = buf
        .as_ref()
        .ok_or_else(|| crate::EngineError::Internal("read from an empty device KV head".into()))?;
    Ok(buf.narrow(0, start, end - start)?)
}

/// One [`DeviceHead`] per (layer, KV head), all on one device.
#[derive(Debug)]
pub struct DeviceKvStore {
    layout: KvLayout,
    device: Device,
    heads: Vec<DeviceHead>,
}

impl DeviceKvStore {
    pub fn new(layout: KvLayout, device: Device) -> Self {
        DeviceKvStore {
            layout,
            device,
            heads: (0..layout.n_layers * layout.n_kv_heads)
                .map(|_| DeviceHead::new())
                .collect(),
        }
    }

    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn head(&self, layer: usize, kv_head: usize) -> &DeviceHead {
        &self.heads[layer * self.layout.n_kv_heads + kv_head]
    }

    /// Stores a layer's new K/V, given `[T, n_kv_heads, head_dim]` tensors on the device.
    pub fn append_layer(
        &mut self,
        layer: usize,
        positions: &[u32],
        k: &Tensor,
        v: &Tensor,
    ) -> Result<()> {
        let n_kv = self.layout.n_kv_heads;
        for g in 0..n_kv {
            let kg = k.narrow(1, g, 1)?.squeeze(1)?;
            let vg = v.narrow(1, g, 1)?.squeeze(1)?;
            self.heads[layer * n_kv + g].push(positions, &kg, &vg)?;
        }
        Ok(())
    }

    /// Bytes of the rows held (f32 keys and values, and u32 positions), counted as
    /// [`super::KvStore::resident_bytes`] counts them.
    pub fn resident_bytes(&self) -> usize {
        let d = self.layout.head_dim;
        self.heads
            .iter()
            .map(|h| h.len() * (2 * d * 4 + 4))
            .sum()
    }

    /// Device bytes allocated for rows, including growth headroom not yet filled.
    pub fn allocated_bytes(&self) -> usize {
        let d = self.layout.head_dim;
        self.heads
            .iter()
            .map(|h| h.capacity() * 2 * d * 4 + h.positions.capacity() * 4)
            .sum()
    }

    /// Drops every row and frees the device buffers.
    pub fn clear(&mut self) {
        self.heads.iter_mut().for_each(|h| *h = DeviceHead::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_per_head_and_survive_growth() {
        let layout = KvLayout {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 3,
        };
        let dev = Device::Cpu;
        let mut store = DeviceKvStore::new(layout, dev.clone());
        // value = 100*token + 10*head + dim, for tokens 0..t0+t1 in two calls.
        let kv = |tokens: std::ops::Range<u32>| {
            let data: Vec<f32> = tokens
                .clone()
                .flat_map(|t| (0..2).flat_map(move |g| (0..3).map(move |i| (100 * t + 10 * g + i) as f32)))
                .collect();
            let n = tokens.len();
            Tensor::from_vec(data, (n, 2, 3), &dev).unwrap()
        };
        store.append_layer(1, &[0, 1], &kv(0..2), &kv(0..2).neg().unwrap()).unwrap();
        // 70 more single tokens: past MIN_ROWS, so the buffer grows at least once.
        for t in 2..72u32 {
            store.append_layer(1, &[t], &kv(t..t + 1), &kv(t..t + 1).neg().unwrap()).unwrap();
        }
        let h = store.head(1, 1);
        assert_eq!(h.len(), 72);
        assert!(h.capacity() >= 72);
        let k = h.keys(0, 72).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(k[0], vec![10.0, 11.0, 12.0]);
        assert_eq!(k[71], vec![7110.0, 7111.0, 7112.0]);
        let v = h.values(70, 72).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(v[1], vec![-7110.0, -7111.0, -7112.0]);
        assert_eq!(h.positions()[71], 71);
        assert!(store.head(0, 0).is_empty(), "other layers untouched");
        assert_eq!(store.resident_bytes(), 2 * 72 * (2 * 3 * 4 + 4));
        store.clear();
        assert_eq!(store.resident_bytes(), 0);
        assert_eq!(store.allocated_bytes(), 0);
    }
}
