//! The policy spec syntax, one for the CLI, the server and the harness:
//! `name[:key=value,…]` parts joined by `+`, e.g. `minicache:start=15,gamma=0.05+kivi:bits=4`.

use std::fmt;
use std::str::FromStr;

/// One `name:key=value,…` part of a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSpec {
    pub name: String,
    pub knobs: Vec<(String, String)>,
}

/// A whole spec: its parts in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    pub parts: Vec<PartSpec>,
}

/// What is wrong with a spec, naming the part, knob and accepted values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("malformed policy spec `{spec}`: {reason}")]
    Malformed { spec: String, reason: String },
    #[error("unknown policy `{name}` (known: {known})")]
    UnknownPolicy { name: String, known: String },
    #[error("unknown knob `{knob}` for policy `{policy}` (its knobs: {known})")]
    UnknownKnob {
        policy: String,
        knob: String,
        known: String,
    },
    #[error("invalid value `{value}` for `{policy}:{knob}`: expected {expected}")]
    BadValue {
        policy: String,
        knob: String,
        value: String,
        expected: String,
    },
    #[error("policy `{first}` cannot be combined with `{second}`: {reason}")]
    Conflict {
        first: String,
        second: String,
        reason: String,
    },
}

impl FromStr for PolicySpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let malformed = |reason: String| SpecError::Malformed {
            spec: spec.to_string(),
            reason,
        };
        let spec_trim = spec.trim();
        if spec_trim.is_empty() {
            return Err(malformed("it is empty".into()));
        }
        let mut parts = Vec::new();
        for part in spec_trim.split('+') {
            let part = part.trim();
            let (name, knobs_text) = match part.split_once(':') {
                Some((n, k)) => (n.trim(), Some(k)),
                None => (part, None),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(malformed(format!(
                    "`{part}` does not start with a policy name"
                )));
            }
            let mut knobs: Vec<(String, String)> = Vec::new();
            if let Some(text) = knobs_text {
                for kv in text.split(',') {
                    let Some((k, v)) = kv.split_once('=') else {
                        return Err(malformed(format!("`{kv}` in `{part}` is not key=value")));
                    };
                    let (k, v) = (k.trim(), v.trim());
                    if k.is_empty() || v.is_empty() {
                        return Err(malformed(format!(
                            "`{kv}` in `{part}` has an empty key or value"
                        )));
                    }
                    if knobs.iter().any(|(x, _)| x == k) {
                        return Err(malformed(format!("knob `{k}` is given twice in `{part}`")));
                    }
                    knobs.push((k.to_string(), v.to_string()));
                }
            }
            parts.push(PartSpec {
                name: name.to_string(),
                knobs,
            });
        }
        Ok(PolicySpec { parts })
    }
}

impl fmt::Display for PartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        for (i, (k, v)) in self.knobs.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { ':' } else { ',' })?;
        }
        Ok(())
    }
}

impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// `name:knob=v1,v2,…` → one spec per value (the harness's `--sweep`). Other knobs of the
/// part may be given as usual, e.g. `minicache:start=15,gamma=0,0.05` sweeps `gamma`: a
/// comma-separated item without `=` continues the list of the knob before it.
pub fn expand_sweep(sweep: &str) -> Result<Vec<PolicySpec>, SpecError> {
    let malformed = |reason: &str| SpecError::Malformed {
        spec: sweep.to_string(),
        reason: reason.to_string(),
    };
    let (name, knobs) = sweep
        .split_once(':')
        .ok_or_else(|| malformed("a sweep needs `name:knob=v1,v2,…`"))?;
    let mut fixed: Vec<(String, String)> = Vec::new();
    let mut swept: Option<(String, Vec<String>)> = None;
    let mut last_key: Option<String> = None;
    for item in knobs.split(',') {
        let item = item.trim();
        match item.split_once('=') {
            Some((k, v)) => {
                fixed.push((k.trim().to_string(), v.trim().to_string()));
                last_key = Some(k.trim().to_string());
            }
            None => {
                let key = last_key
                    .clone()
                    .ok_or_else(|| malformed("a value list must follow `knob=`"))?;
                match &mut swept {
                    None => {
                        let pos = fixed
                            .iter()
                            .position(|(k, _)| *k == key)
                            .expect("just pushed");
                        let first = fixed.remove(pos).1;
                        swept = Some((key, vec![first, item.to_string()]));
                    }
                    Some((k, values)) if *k == key => values.push(item.to_string()),
                    Some(_) => return Err(malformed("only one knob can be swept at a time")),
                }
            }
        }
    }
    let (key, values) = swept.ok_or_else(|| malformed("no knob has more than one value"))?;
    values
        .into_iter()
        .map(|v| {
            let mut knobs = fixed.clone();
            knobs.push((key.clone(), v));
            let text = format!(
                "{name}:{}",
                knobs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            text.parse()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_back() {
        let s: PolicySpec = "minicache:start=15,gamma=0.05+kivi:bits=4".parse().unwrap();
        assert_eq!(s.parts.len(), 2);
        assert_eq!(s.parts[0].name, "minicache");
        assert_eq!(
            s.parts[0].knobs,
            vec![
                ("start".into(), "15".into()),
                ("gamma".into(), "0.05".into())
            ]
        );
        assert_eq!(s.to_string(), "minicache:start=15,gamma=0.05+kivi:bits=4");
        assert_eq!("full".parse::<PolicySpec>().unwrap().to_string(), "full");
    }

    #[test]
    fn malformed_specs_say_what_is_wrong() {
        for (bad, says) in [
            ("", "empty"),
            ("minicache:gamma", "not key=value"),
            ("minicache:gamma=", "empty key or value"),
            ("+kivi", "policy name"),
            ("kivi:bits=4,bits=2", "twice"),
        ] {
            let err = bad.parse::<PolicySpec>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn sweeps_expand_one_knob() {
        let v = expand_sweep("minicache:gamma=0,0.01,0.05").unwrap();
        let names: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            [
                "minicache:gamma=0",
                "minicache:gamma=0.01",
                "minicache:gamma=0.05"
            ]
        );
        let v = expand_sweep("minicache:start=15,gamma=0,0.1").unwrap();
        assert_eq!(v[1].to_string(), "minicache:start=15,gamma=0.1");
        assert!(expand_sweep("minicache:gamma=0").is_err());
        assert!(expand_sweep("minicache").is_err());
    }
}
