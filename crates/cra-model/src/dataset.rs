//! A table of labelled applications.
use crate::application::Application;

/// A table of labelled applications: what the generator produces and the trainer consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub rows: Vec<Application>,
    /// The `default` label of each row, 0 or 1.
    pub labels: Vec<u8>,
    /// The generator's default probability of each row, when the file has `true_pd`.
    pub true_pd: Option<Vec<f64>>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Share of rows labelled 1.
    pub fn default_rate(&self) -> f64 {
        if self.labels.is_empty() {
            return f64::NAN;
        }
        self.labels.iter().map(|&l| l as f64).sum::<f64>() / self.labels.len() as f64
    }
}
