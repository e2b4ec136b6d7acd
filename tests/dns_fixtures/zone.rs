//! The `.zone` case files: `#` header lines, then master-file records under `$ORIGIN`.

use std::path::PathBuf;

/// One resource record with its owner made absolute.
#[derive(Clone, Debug)]
pub struct ZoneRecord {
    pub owner: String,
    pub ttl: u32,
    pub record_type: String,
    pub rdata: String,
}

impl ZoneRecord {
    /// The record in the form unbound's `local-data:` takes.
    pub fn local_data(&self) -> String {
        format!(
            "{} {} IN {} {}",
            self.owner, self.ttl, self.record_type, self.rdata
        )
    }
}

/// Path of a case file shipped under `tests/cases`.
pub fn case_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cases")
        .join(file)
}

/// Reads a case file's records (headers stripped, `@` and relative owners made absolute).
pub fn read_case(file: &str) -> Vec<ZoneRecord> {
    let path = case_path(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_zone(&text)
}

pub fn parse_zone(text: &str) -> Vec<ZoneRecord> {
    let mut origin = String::from(".");
    let mut records = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[0] == "$ORIGIN" {
            origin = fields[1].to_string();
            continue;
        }
        let owner = match fields[0] {
            "@" => origin.clone(),
            name if name.ends_with('.') => name.to_string(),
            name => format!("{name}.{origin}"),
        };
        assert_eq!(fields[2], "IN", "zone line without explicit class: {line}");
        records.push(ZoneRecord {
            owner,
            ttl: fields[1].parse().expect("zone line without TTL"),
            record_type: fields[3].to_string(),
            rdata: fields[4..].join(" "),
        });
    }
    records
}
