//! Cutting a large run into generator chunks.
//!
//! The generator holds all of its events in memory (it interleaves orders and places
//! duplicates), about 2.3 KB per order: 10 million orders at once were 23 GB and the OOM killer
//! took `paystream produce`. A run of more than [`CHUNK_ORDERS`] orders is generated and sent
//! one chunk after the other, each continuing the order numbers of the one before, with its own
//! seed (derived from the run's, so the run stays reproducible). A run that fits in one chunk is
//! generated exactly as before: same seed, same traffic.

use super::generator::GeneratorOptions;

/// Orders generated at once, at most.
pub(crate) const CHUNK_ORDERS: u64 = 1_000_000;

/// How far event times may spread: the generator starts a day back and a broker refuses
/// timestamps more than an hour ahead, so all orders start within 20 hours.
const SPAN_MS: u64 = 20 * 3_600_000;

/// The generator options of each chunk of `run`, in order. Orders, events (when given) and
/// malformed records are shared in proportion to the chunk's orders, the last chunk taking the
/// rounding. A run so large that its orders, `order_spacing_ms` apart, would start past now
/// gets a closer spacing (all orders within 20 hours).
pub(crate) fn plan(run: &GeneratorOptions) -> Vec<GeneratorOptions> {
    if run.orders <= CHUNK_ORDERS {
        return vec![run.clone()];
    }
    let spacing = i64::try_from(SPAN_MS / run.orders)
        .unwrap_or(run.order_spacing_ms)
        .clamp(1, run.order_spacing_ms.max(1));
    let share = |total: u64, n: u64| {
        u64::try_from(u128::from(total) * u128::from(n) / u128::from(run.orders)).unwrap_or(total)
    };
    let mut chunks = Vec::new();
    let (mut done, mut events_left, mut malformed_left) =
        (0, run.events.unwrap_or(0), run.malformed);
    while done < run.orders {
        let n = CHUNK_ORDERS.min(run.orders - done);
        let last = done + n == run.orders;
        let events = run.events.map(|total| {
            if last {
                events_left
            } else {
                share(total, n).min(events_left)
            }
        });
        let malformed = if last {
            malformed_left
        } else {
            share(run.malformed, n).min(malformed_left)
        };
        let first_order = run.first_order + done;
        chunks.push(GeneratorOptions {
            seed: run.seed ^ first_order,
            orders: n,
            events,
            malformed,
            first_order,
            order_spacing_ms: spacing,
            ..run.clone()
        });
        done += n;
        events_left -= events.unwrap_or(0);
        malformed_left -= malformed;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(orders: u64, events: Option<u64>, malformed: u64) -> GeneratorOptions {
        GeneratorOptions {
            orders,
            events,
            malformed,
            ..Default::default()
        }
    }

    #[test]
    fn a_run_that_fits_is_one_chunk_unchanged() {
        let r = run(CHUNK_ORDERS, Some(3_500_000), 7);
        let chunks = plan(&r);
        assert_eq!(chunks.len(), 1);
        let c = &chunks[0];
        assert_eq!(
            (
                c.seed,
                c.orders,
                c.events,
                c.malformed,
                c.first_order,
                c.order_spacing_ms
            ),
            (
                r.seed,
                r.orders,
                r.events,
                r.malformed,
                r.first_order,
                r.order_spacing_ms
            )
        );
    }

    #[test]
    fn chunks_cover_every_order_event_and_malformed_record_once_in_order() {
        for (orders, events, malformed) in [
            (1_000_001, Some(3_200_004), 3),
            (2_500_000, Some(10_000_001), 1_000),
            (10_000_000, None, 0),
        ] {
            let r = run(orders, events, malformed);
            let chunks = plan(&r);
            let mut next = r.first_order;
            for c in &chunks {
                assert_eq!(c.first_order, next, "{chunks:?}");
                assert!(c.orders > 0 && c.orders <= CHUNK_ORDERS, "{chunks:?}");
                next += c.orders;
            }
            assert_eq!(next, orders);
            let sum = |f: fn(&GeneratorOptions) -> u64| chunks.iter().map(f).sum::<u64>();
            assert_eq!(sum(|c| c.malformed), malformed);
            match events {
                Some(e) => assert_eq!(sum(|c| c.events.unwrap_or(u64::MAX / 64)), e),
                None => assert!(chunks.iter().all(|c| c.events.is_none())),
            }
            let seeds: std::collections::BTreeSet<u64> = chunks.iter().map(|c| c.seed).collect();
            assert_eq!(seeds.len(), chunks.len(), "each chunk its own seed");
        }
    }

    #[test]
    fn a_large_run_starts_every_order_within_twenty_hours() {
        let r = run(10_000_000, None, 0);
        for c in plan(&r) {
            let last_start = (c.first_order + c.orders) as i64 * c.order_spacing_ms;
            assert!(last_start <= 20 * 3_600_000, "{last_start} ms");
            assert!(c.order_spacing_ms >= 1);
        }
    }
}
