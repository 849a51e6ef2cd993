//! Class-incremental protocols `B-I`: a base task of `B` classes, then tasks of `I` new classes
//! each until all classes are seen (10-10: 2 tasks, 10-2: 6, 10-1: 11 over 20 classes), and the
//! ADE-style relabelling of each task.

use crate::scenes::IGNORE;
use std::ops::Range;

/// A `base-increment` protocol over `total` classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Protocol {
    pub base: usize,
    pub increment: usize,
    pub total: usize,
}

impl Protocol {
    /// Parse `B-I` (e.g. `10-1`) over `total` classes.
    pub fn parse(s: &str, total: usize) -> anyhow::Result<Self> {
        let (b, i) = s
            .split_once('-')
            .ok_or_else(|| anyhow::anyhow!("protocol {s:?} is not of the form BASE-INCREMENT"))?;
        let base: usize = b
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("protocol {s:?}: base {b:?} is not a number"))?;
        let increment: usize = i
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("protocol {s:?}: increment {i:?} is not a number"))?;
        if base == 0 || increment == 0 || base >= total || (total - base) % increment != 0 {
            anyhow::bail!(
                "protocol {s:?}: need 0 < base < {total} and ({total} - base) divisible by the increment"
            );
        }
        Ok(Self {
            base,
            increment,
            total,
        })
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.base, self.increment)
    }

    /// Class range of every task, base task first.
    pub fn tasks(&self) -> Vec<Range<usize>> {
        let mut v = Vec::with_capacity(1 + (self.total - self.base) / self.increment);
        v.push(0..self.base);
        let mut s = self.base;
        while s < self.total {
            v.push(s..s + self.increment);
            s += self.increment;
        }
        v
    }
}

/// Labels of a training step of the task with `classes`: every pixel outside the task's classes
/// (old, future, background) becomes [`IGNORE`].
pub fn task_labels(labels: &[u8], classes: &Range<usize>) -> Vec<u8> {
    labels
        .iter()
        .map(|&l| {
            if classes.contains(&(l as usize)) {
                l
            } else {
                IGNORE
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_have_the_paper_task_counts() {
        assert_eq!(Protocol::parse("10-10", 20).unwrap().tasks().len(), 2);
        assert_eq!(Protocol::parse("10-2", 20).unwrap().tasks().len(), 6);
        let p = Protocol::parse("10-1", 20).unwrap();
        assert_eq!(p.tasks().len(), 11);
        assert_eq!(p.tasks()[3], 12..13);
        assert!(Protocol::parse("10-3", 20).is_err());
        assert!(Protocol::parse("x", 20).is_err());
        assert_eq!(
            task_labels(&[0, 12, 13, 255], &(12..13)),
            vec![255, 12, 255, 255]
        );
    }
}
