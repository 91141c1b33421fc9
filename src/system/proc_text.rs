//! Text the kernel writes under `/proc`: its octal escapes (`\040` for a space in
//! `/proc/self/mountinfo`, `\012` for a newline in `/proc/PID/maps`).

/// Decode the kernel's `\ooo` escapes of the bytes `escaped` says it escapes in this file
/// (`mountinfo` escapes space, tab, newline, backslash and `#`; `maps` only newline: a
/// backslash there is a literal backslash). Anything else, including a `\` not followed by a
/// valid byte escape (first digit 0–3), is kept as it is.
pub(crate) fn unescape_octal(s: &str, escaped: impl Fn(u8) -> bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let byte = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            if escaped(byte) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_octal;

    #[test]
    fn decodes_only_what_the_file_escapes() {
        let any = |_| true;
        assert_eq!(unescape_octal(r"/dev\040x\134y\011", any), "/dev x\\y\t");
        assert_eq!(unescape_octal(r"\400 \09 \1", any), r"\400 \09 \1");
        let maps = |b| b == b'\n';
        assert_eq!(unescape_octal(r"/a\012b", maps), "/a\nb");
        // In maps a backslash is itself: `\040` there is four characters of the file name.
        assert_eq!(unescape_octal(r"/a\040b", maps), r"/a\040b");
    }
}
