//! [`Family`]: a labelled metric family that only takes the label values its tables list.

use prometheus::core::{MetricVec, MetricVecBuilder};

use super::{labels, Dim};

/// A labelled metric family whose label values come from [`labels`]. The vector inside is
/// reached only through [`Family::with_label_values`], which checks the values in debug builds:
/// a value missing from its table fails the first test that counts it, instead of becoming a
/// series that appears only after its first event.
#[derive(Clone, Debug)]
pub struct Family<V> {
    vec: V,
    dims: &'static [Dim],
}

impl<T: MetricVecBuilder> Family<MetricVec<T>> {
    pub(super) fn new(vec: MetricVec<T>, dims: &'static [Dim]) -> Self {
        Family { vec, dims }
    }

    /// The child for `values`, one per dimension, each from its table.
    pub fn with_label_values(&self, values: &[&str]) -> T::M {
        debug_assert!(
            self.known(values),
            "{}: label values {values:?} are not in metrics::labels; add them to its table",
            prometheus::core::Collector::desc(&self.vec)[0].fq_name
        );
        self.vec.with_label_values(values)
    }

    fn known(&self, values: &[&str]) -> bool {
        values.len() == self.dims.len()
            && values.iter().zip(self.dims).all(|(v, dim)| {
                dim.iter().any(|t| t.contains(v)) || (cfg!(test) && labels::TEST_ONLY.contains(v))
            })
    }

    /// Creates (at 0) the child of every combination of known values; with `first`, only those
    /// whose first label is `first`.
    pub(super) fn precreate(&self, first: Option<&str>) {
        let mut combos: Vec<Vec<&str>> = vec![Vec::new()];
        for (i, dim) in self.dims.iter().enumerate() {
            let mut values: Vec<&str> = match (i, first) {
                (0, Some(f)) => vec![f],
                _ => dim.iter().flat_map(|t| t.iter().copied()).collect(),
            };
            values.sort_unstable();
            values.dedup();
            combos = combos
                .iter()
                .flat_map(|c| values.iter().map(move |v| [&c[..], &[*v]].concat()))
                .collect();
        }
        for c in combos {
            self.with_label_values(&c);
        }
    }

    /// The vector itself, to register it.
    pub fn vec(&self) -> &MetricVec<T> {
        &self.vec
    }
}
