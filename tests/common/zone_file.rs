//! The `.zone` case files under `tests/cases/`: `#` header lines (`kind`, `source`, `role`,
//! `upstream`, `peer`, `expect`), then master-file records under `$ORIGIN`, turned into the
//! absolute one-line records unbound's `local-data:` takes.

use std::path::PathBuf;

/// One case file: its header fields and its records.
pub struct CaseZone {
    pub file: String,
    headers: Vec<(String, String)>,
    records: Vec<String>,
}

impl CaseZone {
    /// Reads `tests/cases/<file>`.
    pub fn read(file: &str) -> CaseZone {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/cases")
            .join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let (headers, records) = parse(&text);
        CaseZone {
            file: file.to_string(),
            headers,
            records,
        }
    }

    /// The records, owners absolute, e.g. `mx-p5.example.net. 300 IN A 127.0.0.51`.
    pub fn records(&self) -> Vec<&str> {
        self.records.iter().map(String::as_str).collect()
    }

    /// The text of header `name` (`expect`, `peer`, ...), for failure messages.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }
}

fn parse(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut headers = Vec::new();
    let mut records = Vec::new();
    let mut origin = ".".to_string();
    for line in text.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            if let Some((key, value)) = header.split_once(':') {
                headers.push((key.trim().to_string(), value.trim().to_string()));
            }
            continue;
        }
        let line = line.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[0] == "$ORIGIN" {
            origin = fields[1].to_string();
            continue;
        }
        let owner = absolute(fields[0], &origin);
        records.push(format!("{owner} {}", fields[1..].join(" ")));
    }
    (headers, records)
}

fn absolute(name: &str, origin: &str) -> String {
    match name {
        "@" => origin.to_string(),
        name if name.ends_with('.') => name.to_string(),
        name => format!("{name}.{origin}"),
    }
}
