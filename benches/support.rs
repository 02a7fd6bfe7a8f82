//! Shared helpers for the benchmarks: locating the built guest, and simple
//! statistics printed as plain text.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// `target/guest` of this workspace.
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest")
}

/// The VMM backend and accelerator the shim logged when it booted a sandbox
/// ("qemu, tcg", "builtin, kvm"), from containerd's log.
pub fn backend_in_log(log: &str) -> String {
    log.split("booting the sandbox VM with the ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map_or("backend not logged".into(), |s| {
            s.replace(" backend (", ", ")
        })
}

/// min / median / max of `samples`, in milliseconds.
pub fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match samples {
        [] => "no samples".into(),
        _ => format!(
            "min {:.0} ms, median {:.0} ms, max {:.0} ms (n={})",
            ms(samples[0]),
            ms(samples[samples.len() / 2]),
            ms(samples[samples.len() - 1]),
            samples.len()
        ),
    }
}

/// One runtime's bar of a [`bar_chart_svg`]: its median and p95.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub median_ms: f64,
    pub p95_ms: f64,
}

/// Draws `bars` (median as a bar, p95 as a thin line above it) to an SVG
/// file at `path`.
pub fn bar_chart_svg(path: &Path, title: &str, bars: &[Bar]) -> Result<(), String> {
    use plotters::prelude::*;
    let top = bars
        .iter()
        .map(|b| b.p95_ms.max(b.median_ms))
        .fold(1.0, f64::max)
        * 1.15;
    let width = u32::try_from(bars.len().clamp(3, 12)).unwrap_or(12) * 160 + 120;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("ms")
        .x_labels(bars.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), b.median_ms),
                ],
                BLUE.mix(0.6).filled(),
            );
            bar.set_margin(0, 0, 24, 24);
            bar
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            PathElement::new(
                [
                    (SegmentValue::CenterOf(i), b.median_ms),
                    (SegmentValue::CenterOf(i), b.p95_ms),
                ],
                BLACK.stroke_width(2),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                format!("{:.0}", b.median_ms),
                (SegmentValue::CenterOf(i), b.median_ms),
                ("sans-serif", 14),
            )
        }))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// A file's size for the report, or why it has none.
pub fn size_of(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{:.2} MiB ({} bytes)", m.len() as f64 / 1048576.0, m.len()),
        Err(e) => format!("unavailable ({}: {e})", path.display()),
    }
}

/// The TCP measurement of `benches/net.rs`, on the host; the same code
/// runs in the pods as `netprobe` (netprobe/main.rs).
#[path = "netprobe/probe.rs"]
pub mod netprobe;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_and_a_label_per_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        let bars = [
            Bar {
                label: "runc".into(),
                median_ms: 131.0,
                p95_ms: 266.0,
            },
            Bar {
                label: "firedoor (qemu, tcg)".into(),
                median_ms: 1536.0,
                p95_ms: 1754.0,
            },
        ];
        bar_chart_svg(&path, "ctr run --rm true", &bars).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in ["runc", "firedoor (qemu, tcg)", "1536", "ctr run --rm true"] {
            assert!(svg.contains(text), "{text} missing from the chart");
        }
        // Two bars (plus the white background).
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
    }
}
