//! Text folding for Vietnamese search.
//!
//! Staff type names without diacritics on tablet keyboards ("nguyen thi huong") and expect to find
//! "Nguyễn Thị Hương". Folding decomposes to NFD, drops combining marks, maps đ/Đ to d (it is a
//! letter of its own, not a d with a mark, so NFD leaves it alone) and lowercases. The same folding
//! is applied to indexed text and to queries.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// Folds `text` for indexing or matching: lowercase, no diacritics, đ → d.
pub fn fold(text: &str) -> String {
    text.nfd()
        .filter(|c| !is_combining_mark(*c))
        .map(|c| match c {
            'đ' | 'Đ' => 'd',
            other => other,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// Turns what a person typed into an FTS5 match expression: every word must appear, and the last
/// word may be a prefix (search as you type). Returns `None` when nothing searchable is left.
pub fn match_expression(query: &str) -> Option<String> {
    let folded = fold(query);
    let words: Vec<&str> = folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(16)
        .collect();
    let (last, rest) = words.split_last()?;
    let mut expr: Vec<String> = rest.iter().map(|w| format!("\"{w}\"")).collect();
    expr.push(format!("\"{last}\"*"));
    Some(expr.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_vietnamese_names() {
        assert_eq!(fold("Nguyễn Thị Hương"), "nguyen thi huong");
        assert_eq!(fold("Đặng Văn Đức"), "dang van duc");
        assert_eq!(fold("Điện Biên Phủ"), "dien bien phu");
        assert_eq!(fold("bản Mường Phăng"), "ban muong phang");
    }

    #[test]
    fn precomposed_and_decomposed_input_fold_alike() {
        let composed = "Hương";
        let decomposed: String = composed.nfd().collect();
        assert_ne!(composed, decomposed);
        assert_eq!(fold(composed), fold(&decomposed));
    }

    #[test]
    fn match_expression_quotes_words_and_prefixes_the_last() {
        assert_eq!(
            match_expression("Nguyễn thị HUO").unwrap(),
            "\"nguyen\" \"thi\" \"huo\"*"
        );
        // FTS5 syntax in the input cannot escape the quoting.
        assert_eq!(match_expression("a\" OR b").unwrap(), "\"a\" \"or\" \"b\"*");
        assert!(match_expression("  -- ").is_none());
    }
}
