//! What the gateway's hop adds, measured so that one noisy stretch on shared cores cannot
//! decide it: short runs of the direct read (2) and the gateway read (3) alternate in ABBA
//! order (each pair starts with the one that went second before, so a slow drift favours
//! neither), and the report takes the median of the per-round differences.

use std::time::Duration;

use crate::measure::Measured;

/// One round: the direct read and the gateway read, run one right after the other.
#[derive(Debug, Clone)]
pub struct Round {
    pub direct: Measured,
    pub gateway: Measured,
}

impl Round {
    pub fn added_p50_ms(&self) -> f64 {
        (self.gateway.p50_us as f64 - self.direct.p50_us as f64) / 1000.0
    }

    pub fn added_p99_ms(&self) -> f64 {
        (self.gateway.p99_us as f64 - self.direct.p99_us as f64) / 1000.0
    }
}

/// How a run's clients send: back to back, or pausing `think` after each answer.
pub fn load_label(think: Option<Duration>) -> String {
    think.map_or("back to back".to_string(), |t| {
        format!("paced, {} ms after an answer", t.as_millis())
    })
}

/// The rounds at one concurrency, back to back (`think: None`) or paced.
#[derive(Debug, Clone)]
pub struct HopRounds {
    pub concurrency: usize,
    pub think: Option<Duration>,
    pub rounds: Vec<Round>,
}

impl HopRounds {
    pub fn median_added_p50_ms(&self) -> Option<f64> {
        median(self.rounds.iter().map(Round::added_p50_ms).collect())
    }

    pub fn median_added_p99_ms(&self) -> Option<f64> {
        median(self.rounds.iter().map(Round::added_p99_ms).collect())
    }

    pub fn median_direct_per_second(&self) -> Option<f64> {
        median(self.rounds.iter().map(|r| r.direct.per_second()).collect())
    }

    pub fn median_gateway_per_second(&self) -> Option<f64> {
        median(self.rounds.iter().map(|r| r.gateway.per_second()).collect())
    }
}

/// The middle value (the mean of the two middle ones for an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Runs `rounds` rounds of `direct` and `gateway`, alternating which goes first.
pub fn interleave(
    rounds: usize,
    direct: &mut dyn FnMut() -> anyhow::Result<Measured>,
    gateway: &mut dyn FnMut() -> anyhow::Result<Measured>,
) -> anyhow::Result<Vec<Round>> {
    let mut done = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let round = if i % 2 == 0 {
            let direct = direct()?;
            Round {
                direct,
                gateway: gateway()?,
            }
        } else {
            let gateway = gateway()?;
            Round {
                direct: direct()?,
                gateway,
            }
        };
        done.push(round);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    fn measured(p50_us: u64, p99_us: u64) -> Measured {
        Measured {
            requests: 1000,
            errors: 0,
            elapsed: Duration::from_secs(1),
            p50_us,
            p99_us,
            p999_us: p99_us,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn one_noisy_round_does_not_decide_the_median() {
        let hop = HopRounds {
            concurrency: 64,
            think: None,
            rounds: [
                (3_000, 3_600),
                (3_100, 3_500),
                (2_900, 9_900),
                (3_000, 3_800),
            ]
            .into_iter()
            .map(|(direct, gateway)| Round {
                direct: measured(1_000, direct),
                gateway: measured(1_400, gateway),
            })
            .collect(),
        };
        // Differences 0.6, 0.4, 7.0, 0.8: the median is 0.7 where the mean would be 2.2.
        let added = hop.median_added_p99_ms().unwrap();
        assert!((added - 0.7).abs() < 1e-9, "{added}");
        assert_eq!(hop.median_added_p50_ms(), Some(0.4));
        assert_eq!(hop.median_gateway_per_second(), Some(1000.0));
    }

    #[test]
    fn rounds_alternate_which_read_goes_first() {
        let order = RefCell::new(String::new());
        let rounds = interleave(
            4,
            &mut || {
                order.borrow_mut().push('d');
                Ok(measured(1, 2))
            },
            &mut || {
                order.borrow_mut().push('g');
                Ok(measured(3, 4))
            },
        )
        .unwrap();
        assert_eq!(order.into_inner(), "dggddggd");
        assert_eq!(rounds.len(), 4);
        assert!(
            rounds
                .iter()
                .all(|r| r.direct.p99_us == 2 && r.gateway.p99_us == 4)
        );
    }

    #[test]
    fn a_failed_run_stops_the_rounds() {
        let mut runs = 0;
        let result = interleave(4, &mut || Ok(measured(1, 2)), &mut || {
            runs += 1;
            anyhow::bail!("wrk died")
        });
        assert!(result.is_err());
        assert_eq!(runs, 1);
    }
}
