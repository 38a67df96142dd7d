//! A document's text for the model: plain text, Markdown, CSV and JSON as
//! they are (UTF-8), PDFs through `pdf-extract`; at most a budget of
//! characters. Other files (archives, office formats, images) are read by
//! their stand-in only.

/// How a document is read, by its MIME type or, where the provider said
/// none or a generic one, its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Text,
    Pdf,
}

fn form(mime: Option<&str>, name: Option<&str>) -> Option<Form> {
    let mime = mime.unwrap_or_default().to_ascii_lowercase();
    let mime = mime.split(';').next().unwrap_or_default().trim();
    match mime {
        "application/pdf" => return Some(Form::Pdf),
        "application/json" | "application/x-ndjson" | "application/csv" => {
            return Some(Form::Text);
        }
        m if m.starts_with("text/") && !m.contains("vcard") => return Some(Form::Text),
        _ => {}
    }
    let extension = name?.rsplit_once('.')?.1.to_ascii_lowercase();
    match extension.as_str() {
        "pdf" => Some(Form::Pdf),
        "txt" | "md" | "markdown" | "csv" | "tsv" | "json" | "log" => Some(Form::Text),
        _ => None,
    }
}

/// The text of `bytes`, cut at `max_chars` (the cut said), if it is a kind
/// read as text: `None` for any other kind, `Err` with why for one that
/// cannot be read (not UTF-8, a damaged or scanned PDF).
pub fn text_of(
    bytes: &[u8],
    mime: Option<&str>,
    name: Option<&str>,
    max_chars: usize,
) -> Option<Result<String, String>> {
    let read = match form(mime, name)? {
        Form::Text => std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| "not UTF-8 text".to_string()),
        Form::Pdf => pdf(bytes),
    };
    Some(read.and_then(|mut text| {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("no text in it (a scan?)".into());
        }
        if trimmed.len() != text.len() {
            text = trimmed.to_string();
        }
        crate::core::context::cap_chars(&mut text, max_chars);
        Ok(text)
    }))
}

/// A PDF's text. The parser may panic on a damaged file: that is an
/// unreadable file, not a crashed turn.
fn pdf(bytes: &[u8]) -> Result<String, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pdf_extract::extract_text_from_mem(bytes)
    }))
    .map_err(|_| "an unreadable PDF".to_string())?
    .map_err(|e| format!("an unreadable PDF: {e}"))
    // pdf-extract lays pages out with runs of blank lines.
    .map(|text| {
        let mut out = String::with_capacity(text.len());
        let mut blank = 0;
        for line in text.lines() {
            let line = line.trim_end();
            blank = if line.is_empty() { blank + 1 } else { 0 };
            if blank <= 1 {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_like_files_are_read_and_others_are_not() {
        let csv = text_of(b"a,b\n1,2\n", Some("text/csv"), None, 100);
        assert_eq!(csv, Some(Ok("a,b\n1,2".into())));
        let md = text_of(
            b"# Notes",
            Some("application/octet-stream"),
            Some("n.MD"),
            100,
        );
        assert_eq!(md, Some(Ok("# Notes".into())));
        assert_eq!(
            text_of(b"PK\x03\x04", Some("application/zip"), Some("a.zip"), 100),
            None
        );
        assert_eq!(text_of(b"BEGIN:VCARD", Some("text/vcard"), None, 100), None);
        assert_eq!(
            text_of(b"\xff\xfe", Some("text/plain"), None, 100),
            Some(Err("not UTF-8 text".into()))
        );
        let long = text_of("é".repeat(50).as_bytes(), Some("text/plain"), None, 10).unwrap();
        assert_eq!(
            long.unwrap(),
            format!("{} […cut at 10 characters]", "é".repeat(10))
        );
        let broken = text_of(b"%PDF-1.7 not really", Some("application/pdf"), None, 100);
        assert!(broken.unwrap().is_err());
    }
}
