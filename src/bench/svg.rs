//! Small line plots written as SVG: log-log (time vs size for each system) and linear (a
//! metric vs a setting, e.g. Recall@20 vs noise ratio).

/// One series: name and (x, y) points (both > 0).
pub struct Series {
    /// Legend name.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// Render a log-log plot (points with a non-positive coordinate are left out).
pub fn loglog(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    plot(title, xlabel, ylabel, series, true)
}

/// Render a plot with linear axes (about five round-numbered ticks per axis; non-finite
/// points left out).
pub fn linear(title: &str, xlabel: &str, ylabel: &str, series: &[Series]) -> String {
    plot(title, xlabel, ylabel, series, false)
}

fn plot(title: &str, xlabel: &str, ylabel: &str, series: &[Series], log: bool) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 440.0, 80.0, 180.0, 40.0, 60.0);
    let keep =
        |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite() && (!log || (p.0 > 0.0 && p.1 > 0.0));
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(keep)
        .collect();
    if pts.is_empty() {
        return format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}'><text x='20' y='40'>{title}: no data</text></svg>");
    }
    let lx = |v: f64| if log { v.log10() } else { v };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(lx(x));
        x1 = x1.max(lx(x));
        y0 = y0.min(lx(y));
        y1 = y1.max(lx(y));
    }
    let widen = |a: f64, b: f64| -> (f64, f64) {
        if log {
            (a.floor(), b.ceil().max(a.floor() + 1.0))
        } else if b > a {
            let pad = 0.05 * (b - a);
            (a - pad, b + pad)
        } else {
            (a - 0.5 * a.abs().max(1e-3), b + 0.5 * b.abs().max(1e-3))
        }
    };
    let ((x0, x1), (y0, y1)) = (widen(x0, x1), widen(y0, y1));
    // tick positions in transformed units, and their labels
    let ticks = |a: f64, b: f64| -> Vec<(f64, String)> {
        if log {
            ((a as i32)..=(b as i32))
                .map(|e| (e as f64, format!("1e{e}")))
                .collect()
        } else {
            // a "nice" step (1, 2 or 5 times a power of ten) giving four to seven ticks
            let raw = (b - a) / 6.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|st| *st >= raw)
                .unwrap_or(10.0 * mag);
            let decimals = (-step.log10().floor()).max(0.0) as usize;
            let k0 = (a / step).ceil() as i64;
            (k0..)
                .map(|k| k as f64 * step + 0.0) // + 0.0: no "-0.0" label
                .take_while(|v| *v <= b + 1e-9 * step)
                .map(|v| (v, format!("{v:.decimals$}")))
                .collect()
        }
    };
    let px = |x: f64| ml + (lx(x) - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (lx(y) - y0) / (y1 - y0) * (h - mt - mb);
    let mut s = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='{}' y='24' font-size='15'>{title}</text>\n", ml);
    for (e, label) in ticks(x0, x1) {
        let x = ml + (e - x0) / (x1 - x0) * (w - ml - mr);
        s += &format!("<line x1='{x}' y1='{}' x2='{x}' y2='{}' stroke='#ddd'/><text x='{x}' y='{}' text-anchor='middle'>{label}</text>\n", mt, h - mb, h - mb + 18.0);
    }
    for (e, label) in ticks(y0, y1) {
        let y = h - mb - (e - y0) / (y1 - y0) * (h - mt - mb);
        s += &format!("<line x1='{ml}' y1='{y}' x2='{}' y2='{y}' stroke='#ddd'/><text x='{}' y='{}' text-anchor='end'>{label}</text>\n", w - mr, ml - 6.0, y + 4.0);
    }
    s += &format!(
        "<text x='{}' y='{}' text-anchor='middle'>{xlabel}</text>\n",
        (ml + w - mr) / 2.0,
        h - 20.0
    );
    s += &format!(
        "<text x='18' y='{}' transform='rotate(-90 18 {})' text-anchor='middle'>{ylabel}</text>\n",
        (mt + h - mb) / 2.0,
        (mt + h - mb) / 2.0
    );
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    for (k, se) in series.iter().enumerate() {
        let c = colors[k % colors.len()];
        let p: Vec<String> = se
            .points
            .iter()
            .filter(|p| keep(p))
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        s += &format!(
            "<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>\n",
            p.join(" ")
        );
        for q in &p {
            let (a, b) = q.split_once(',').unwrap();
            s += &format!("<circle cx='{a}' cy='{b}' r='3' fill='{c}'/>\n");
        }
        let ly = mt + 20.0 + 18.0 * k as f64;
        s += &format!("<line x1='{}' y1='{ly}' x2='{}' y2='{ly}' stroke='{c}' stroke-width='2'/><text x='{}' y='{}'>{}</text>\n", w - mr + 10.0, w - mr + 30.0, w - mr + 36.0, ly + 4.0, se.name);
    }
    s + "</svg>\n"
}

/// Least-squares slope of log y against log x (the growth exponent).
pub fn loglog_slope(points: &[(f64, f64)]) -> f64 {
    let v: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.0 > 0.0 && p.1 > 0.0)
        .map(|p| (p.0.ln(), p.1.ln()))
        .collect();
    let n = v.len() as f64;
    if v.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (
        v.iter().map(|p| p.0).sum::<f64>() / n,
        v.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let num: f64 = v.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let den: f64 = v.iter().map(|p| (p.0 - mx).powi(2)).sum();
    num / den
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_plot_has_round_ticks_and_every_series() {
        let series = [
            Series {
                name: "a".into(),
                points: vec![(0.0, 0.1469), (0.2, 0.1149), (0.6, 0.0697)],
            },
            Series {
                name: "b".into(),
                points: vec![(0.0, 0.1458), (0.6, f64::NAN), (0.4, 0.0942)],
            },
        ];
        let svg = linear("t", "x", "y", &series);
        assert_eq!(svg.matches("<polyline").count(), 2);
        // x ticks 0.0 … 0.6 in steps of 0.2, y ticks at round hundredths
        for t in [">0.0<", ">0.2<", ">0.4<", ">0.6<", ">0.08<", ">0.14<"] {
            assert!(svg.contains(t), "missing tick {t}");
        }
        assert!(!svg.contains("NaN"));
        let log = loglog("t", "x", "y", &series);
        assert!(log.contains(">1e-1<") || log.contains(">1e0<"));
    }
}
