//! Times `quant_matvec::matmul` on random weights of one shape: `ROWS COLS FORMAT M [REPS]`
//! (FORMAT q4_0, q4_1 or q8_0). Run it twice, with and without `FRUGAL_QUANT_TILE=off`, to
//! compare the AVX-512 panel kernel with the grouped kernel per activation row.
use frugal_numerics::quant_matvec::{matmul, Q8Activations, QuantFormat, QuantMatrix};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!("usage: quant_matmul_bench ROWS COLS q4_0|q4_1|q8_0 M [REPS]");
        std::process::exit(2);
    }
    let rows: usize = a[1].parse().expect("ROWS");
    let cols: usize = a[2].parse().expect("COLS");
    let format = match a[3].as_str() {
        "q4_0" => QuantFormat::Q4_0,
        "q4_1" => QuantFormat::Q4_1,
        "q8_0" => QuantFormat::Q8_0,
        other => {
            eprintln!("unknown format {other}");
            std::process::exit(2);
        }
    };
    let m: usize = a[4].parse().expect("M");
    let reps: usize = a.get(5).map_or(50, |s| s.parse().expect("REPS"));
    let bytes_per_row = cols / 32 * format.block_bytes();
    // Random codes with small, finite f16 scales (0x2C00 ≈ 0.0625) at each block's front.
    let mut s = 12345u64;
    let mut bytes: Vec<u8> = (0..rows * bytes_per_row)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            (s >> 56) as u8
        })
        .collect();
    for blk in bytes.chunks_exact_mut(format.block_bytes()) {
        blk[0] = 0x00;
        blk[1] = 0x2C;
        if format == QuantFormat::Q4_1 {
            blk[2] = 0x00;
            blk[3] = 0xAC;
        }
    }
    let w = QuantMatrix::new(format, rows, cols, &bytes).expect("shape");
    let x: Vec<f32> = (0..m * cols)
        .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect();
    let xq = Q8Activations::quantize(&x, cols).expect("activations");
    let mut out = vec![0f32; m * rows];
    matmul(&w, &xq, &mut out);
    let t = Instant::now();
    for _ in 0..reps {
        matmul(&w, &xq, &mut out);
    }
    let per = t.elapsed().as_secs_f64() / reps as f64;
    let gmac = (rows * cols * m) as f64 / per / 1e9;
    println!(
        "{rows}x{cols} {format} m={m}: {:.3} ms per call, {gmac:.1} GMAC/s (checksum {:.3})",
        per * 1e3,
        out.iter().sum::<f32>()
    );
}
