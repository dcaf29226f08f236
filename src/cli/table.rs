//! Plain-text tables for terminal output.

/// Render rows as an aligned table with a header and a rule. Numeric-looking cells are
/// right-aligned.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (k, c) in r.iter().enumerate().take(n) {
            w[k] = w[k].max(c.chars().count());
        }
    }
    let is_num = |s: &str| {
        // a number, possibly signed, in percent, or carrying a footnote mark (" *")
        let t = s
            .trim_end_matches(" *")
            .trim_start_matches(['+', '-'])
            .trim_end_matches('%');
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == ',' || c == 'e' || c == 'x')
    };
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(k, c)| {
                if is_num(c) {
                    format!("{c:>width$}", width = w[k])
                } else {
                    format!("{c:<width$}", width = w[k])
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|s| s.to_string()).collect(), &mut out);
    out.push_str(
        &w.iter()
            .map(|&x| "-".repeat(x))
            .collect::<Vec<_>>()
            .join("  "),
    );
    out.push('\n');
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

/// Format an integer with thousands separators.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, ch) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn numbers_align_right_with_or_without_a_footnote_mark() {
        let rows = vec![
            vec!["0.7500".to_string(), "a".to_string()],
            vec!["0.9 *".to_string(), "+1.5%".to_string()],
            vec!["name".to_string(), "-2%".to_string()],
        ];
        let t = render(&["value", "change"], &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[2], "0.7500  a");
        assert_eq!(lines[3], " 0.9 *   +1.5%");
        assert_eq!(lines[4], "name       -2%");
    }
}
