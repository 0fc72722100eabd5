//! Definition files: one automation per `.yaml`, `.yml` or `.json` file (YAML is the same
//! document), named by its `name` key or else by the file's name without its extension.
//! A folder stands for every such file directly in it, in name order.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Failure;

/// One definition file, read.
#[derive(Debug, Clone)]
pub struct DefinitionFile {
    pub path: PathBuf,
    pub name: String,
    /// The document as it is saved: the file's, without its `name`.
    pub document: Result<Value, String>,
}

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every file the paths name (a folder: the definition files in it). A path that does
/// not exist, or a folder with no definition files, is a usage error; a file that does not
/// parse is kept with its error, to be reported with the other files' problems.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<DefinitionFile>, Failure> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Failure::Usage(format!("{}: {e}", p.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && has_definition_extension(f))
                .collect();
            if inside.is_empty() {
                return Err(Failure::Usage(format!(
                    "{}: no .yaml, .yml or .json files in this folder",
                    p.display()
                )));
            }
            inside.sort();
            for f in inside {
                files.push(load(&f)?);
            }
        } else if p.is_file() {
            files.push(load(p)?);
        } else {
            return Err(Failure::Usage(format!("{}: no such file or folder", p.display())));
        }
    }
    let mut names: Vec<(&str, &Path)> = Vec::new();
    for f in &files {
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == f.name) {
            return Err(Failure::Usage(format!(
                "{} and {} both define automation `{}`",
                first.display(),
                f.path.display(),
                f.name
            )));
        }
        names.push((&f.name, &f.path));
    }
    Ok(files)
}

fn has_definition_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads one file.
pub fn load(path: &Path) -> Result<DefinitionFile, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let parsed = parse(path, &text);
    let (name, document) = match parsed {
        Ok(Value::Object(mut doc)) => match doc.remove("name") {
            None => (stem, Ok(Value::Object(doc))),
            Some(Value::String(n)) if !n.trim().is_empty() => (n, Ok(Value::Object(doc))),
            Some(_) => (stem, Err("name: is the automation's name, as text".to_string())),
        },
        Ok(_) => (stem, Err("(document): a definition file holds one object".to_string())),
        Err(e) => (stem, Err(e)),
    };
    Ok(DefinitionFile {
        path: path.to_path_buf(),
        name,
        document,
    })
}

/// The file's document: JSON for `.json`, YAML otherwise.
fn parse(path: &Path, text: &str) -> Result<Value, String> {
    let json = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if json {
        serde_json::from_str(text).map_err(|e| format!("(document): not JSON: {e}"))
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("(document): not YAML: {e}"))
    }
}

/// A saved document as a file holds it: `name` first, then the document's keys in the order
/// docs/definitions.md gives them; inside, `id` and `type` first and the rest by name, so
/// that a document reads the same however it was written or stored.
pub fn to_yaml(name: &str, document: &Value) -> Result<String, String> {
    serde_saphyr::to_string(&Ordered {
        name: Some(name),
        value: document,
    })
    .map_err(|e| e.to_string())
}

/// A document's keys in reading order: what starts it, what it reads, then what it does.
const KEY_ORDER: [&str; 9] = [
    "trigger",
    "data",
    "settings",
    "conditions",
    "exit",
    "timezone",
    "region",
    "admins",
    "steps",
];

/// A value written in reading order: the document (with its `name`) at the top, any object
/// inside it with `id` and `type` first.
struct Ordered<'a> {
    name: Option<&'a str>,
    value: &'a Value,
}

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        let inner = |v| Ordered { name: None, value: v };
        match self.value {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                let rank = |k: &str| match self.name {
                    Some(_) => KEY_ORDER.iter().position(|x| *x == k).unwrap_or(KEY_ORDER.len()),
                    None => ["id", "type"].iter().position(|x| *x == k).unwrap_or(2),
                };
                keys.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
                let mut m = s.serialize_map(Some(o.len() + usize::from(self.name.is_some())))?;
                if let Some(name) = self.name {
                    m.serialize_entry("name", name)?;
                }
                for k in keys {
                    m.serialize_entry(k, &inner(&o[k]))?;
                }
                m.end()
            }
            Value::Array(items) => {
                let mut q = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    q.serialize_element(&inner(v))?;
                }
                q.end()
            }
            other => other.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn yaml_and_json_read_as_the_same_document_named_by_key_or_file() {
        let dir = std::env::temp_dir().join(format!("herald-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let y = write(&dir, "welcome.yaml", "trigger:\n  type: manual\nsteps: []\n");
        let j = write(
            &dir,
            "other.json",
            r#"{"name": "welcome-2", "trigger": {"type": "manual"}, "steps": []}"#,
        );
        let bad = write(&dir, "broken.yml", "trigger: [unclosed\n");
        let list = write(&dir, "list.yaml", "- 1\n- 2\n");
        let files = load_all(&[y, j, bad, list]).unwrap();
        let got: Vec<(&str, Result<&Value, &str>)> = files
            .iter()
            .map(|f| (f.name.as_str(), f.document.as_ref().map_err(|e| e.as_str())))
            .collect();
        let doc = json!({"trigger": {"type": "manual"}, "steps": []});
        assert_eq!(got[0], ("welcome", Ok(&doc)));
        assert_eq!(got[1], ("welcome-2", Ok(&doc)));
        assert!(
            got[2].1.unwrap_err().starts_with("(document): not YAML"),
            "{:?}",
            got[2]
        );
        assert_eq!(got[3].1, Err("(document): a definition file holds one object"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_reads_its_definition_files_in_order_and_two_files_of_one_name_are_refused() {
        let dir = std::env::temp_dir().join(format!("herald-folder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, "b.yaml", "steps: []\n");
        write(&dir, "a.json", "{}");
        write(&dir, "notes.txt", "not a definition");
        let names: Vec<String> = load_all(std::slice::from_ref(&dir))
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        write(&dir, "c.yaml", "name: a\n");
        let Err(Failure::Usage(why)) = load_all(std::slice::from_ref(&dir)) else {
            panic!("two files named a were read");
        };
        assert!(why.ends_with("both define automation `a`"), "{why}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_saved_document_prints_as_a_file_that_reads_back_the_same() {
        let doc = json!({"steps": [{"id": "a", "type": "send_sms", "to": "{{ phone }}", "body": "yes: no"}],
                         "trigger": {"type": "manual"}, "settings": {"max_attempts": 3}});
        let text = to_yaml("welcome", &doc).unwrap();
        assert!(text.starts_with("name: welcome\ntrigger:"), "{text}");
        let mut back: Value = serde_saphyr::from_str(&text).unwrap();
        back.as_object_mut().unwrap().remove("name");
        assert_eq!(back, doc);
    }
}
