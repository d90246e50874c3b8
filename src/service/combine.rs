//! How an ensemble's members' answers become one (paper §6), on plain numbers: no engine here,
//! so the rules are tested on hand-made answers.
use crate::prompts::ensembles::Combine;

/// One member's output for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberAnswer {
    /// Its generated text (None when nothing was generated).
    pub text: Option<String>,
    /// Summed log-probability of the generated tokens.
    pub logprob: Option<f64>,
    /// Log-likelihood of each label (None without labels).
    pub scores: Option<Vec<f64>>,
}

/// What the ensemble answers for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    /// The ensemble's answer: a label when labels were given, else a generated text.
    pub answer: String,
    /// Members whose own answer is `answer`.
    pub votes: usize,
    /// With labels: each label's log-likelihood averaged over the members.
    pub mean_scores: Option<Vec<f64>>,
    /// Each member's own answer and its log-probability, in member order.
    pub members: Vec<(String, f64)>,
}

/// Why answers could not be combined (a request the validation should have refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CombineError {
    /// mean-logprob ranks labels; without them there is nothing to average.
    #[error("combine mean-logprob needs `labels` (it averages each label's log-probability over the members); use an ensemble with combine vote to generate")]
    MeanWithoutLabels,
    /// A member has neither labels scored nor text generated.
    #[error("nothing to combine: send `labels`, or max_new_tokens above 0")]
    Nothing,
}

/// Combines members' answers under `rule`. With labels, each member answers its best label;
/// `vote` takes the label most members chose (ties: the highest log-likelihood summed over
/// all members), `mean-logprob` the label with the highest mean log-likelihood. Without
/// labels, `vote` takes the most frequent generated text (ties: the highest log-probability
/// summed over the members that generated it). Remaining ties go to the earliest member's answer.
pub fn combine(
    rule: Combine,
    labels: &[String],
    members: &[MemberAnswer],
) -> Result<Combined, CombineError> {
    if labels.is_empty() {
        if rule == Combine::MeanLogprob {
            return Err(CombineError::MeanWithoutLabels);
        }
        return vote_texts(members);
    }
    let scores: Vec<&[f64]> = members
        .iter()
        .map(|m| m.scores.as_deref().filter(|s| s.len() == labels.len()))
        .collect::<Option<_>>()
        .ok_or(CombineError::Nothing)?;
    let n = members.len().max(1) as f64;
    let sums: Vec<f64> = (0..labels.len())
        .map(|j| scores.iter().map(|s| s[j]).sum())
        .collect();
    let mean: Vec<f64> = sums.iter().map(|s| s / n).collect();
    let own: Vec<usize> = scores.iter().map(|s| argmax(s)).collect();
    let winner = match rule {
        Combine::MeanLogprob => argmax(&mean),
        Combine::Vote => {
            let mut counts = vec![0usize; labels.len()];
            for &j in &own {
                counts[j] += 1;
            }
            // Candidates in the order members chose them, so a full tie goes to the earliest.
            let mut best: Option<usize> = None;
            for &j in &own {
                let better = match best {
                    None => true,
                    Some(b) => (counts[j], sums[j]) > (counts[b], sums[b]),
                };
                if better {
                    best = Some(j);
                }
            }
            best.unwrap_or(0)
        }
    };
    Ok(Combined {
        answer: labels[winner].clone(),
        votes: own.iter().filter(|&&j| j == winner).count(),
        mean_scores: Some(mean),
        members: own
            .iter()
            .zip(&scores)
            .map(|(&j, s)| (labels[j].clone(), s[j]))
            .collect(),
    })
}

fn vote_texts(members: &[MemberAnswer]) -> Result<Combined, CombineError> {
    let own: Vec<(&str, f64)> = members
        .iter()
        .map(|m| Some((m.text.as_deref()?, m.logprob.unwrap_or(0.0))))
        .collect::<Option<_>>()
        .ok_or(CombineError::Nothing)?;
    // (answer, votes, summed log-probability), in first-seen order.
    let mut tally: Vec<(&str, usize, f64)> = Vec::new();
    for &(text, lp) in &own {
        match tally.iter_mut().find(|(t, _, _)| *t == text) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += lp;
            }
            None => tally.push((text, 1, lp)),
        }
    }
    let mut best = 0;
    for (i, entry) in tally.iter().enumerate() {
        let b = &tally[best];
        if (entry.1, entry.2) > (b.1, b.2) {
            best = i;
        }
    }
    let (answer, votes, _) = tally.get(best).copied().ok_or(CombineError::Nothing)?;
    Ok(Combined {
        answer: answer.to_string(),
        votes,
        mean_scores: None,
        members: own.iter().map(|(t, lp)| (t.to_string(), *lp)).collect(),
    })
}

/// Index of the largest value, by the rule a task's own `label` uses
/// ([`super::rows::best_label`]: the last on exact ties), so a member's answer here is the
/// label its task predicts alone.
fn argmax(values: &[f64]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled(scores: &[f64]) -> MemberAnswer {
        MemberAnswer {
            text: None,
            logprob: None,
            scores: Some(scores.to_vec()),
        }
    }

    fn generated(text: &str, logprob: f64) -> MemberAnswer {
        MemberAnswer {
            text: Some(text.into()),
            logprob: Some(logprob),
            scores: None,
        }
    }

    fn labels() -> Vec<String> {
        ["good", "fine", "bad"].map(String::from).to_vec()
    }

    #[test]
    fn vote_takes_the_majority_label_even_against_a_confident_minority() {
        // Two members prefer `fine` narrowly; one is sure of `bad`. The vote says fine, the mean
        // log-probability says bad.
        let members = [
            labelled(&[-3.0, -0.6, -0.8]),
            labelled(&[-3.0, -0.6, -0.8]),
            labelled(&[-9.0, -9.0, -0.01]),
        ];
        let v = combine(Combine::Vote, &labels(), &members).unwrap();
        assert_eq!((v.answer.as_str(), v.votes), ("fine", 2));
        let m = combine(Combine::MeanLogprob, &labels(), &members).unwrap();
        assert_eq!((m.answer.as_str(), m.votes), ("bad", 1));
        let mean = m.mean_scores.unwrap();
        assert!((mean[1] - (-0.6 - 0.6 - 9.0) / 3.0).abs() < 1e-12);
        assert_eq!(m.members[2], ("bad".to_string(), -0.01));
    }

    #[test]
    fn a_tied_label_vote_goes_to_the_highest_summed_logprob() {
        // good 1 vote, bad 1 vote, fine 0: bad's log-likelihood summed over all members is higher.
        let members = [labelled(&[-0.5, -2.0, -0.7]), labelled(&[-4.0, -3.0, -0.1])];
        let v = combine(Combine::Vote, &labels(), &members).unwrap();
        assert_eq!((v.answer.as_str(), v.votes), ("bad", 1));
    }

    #[test]
    fn generated_answers_vote_and_ties_go_to_the_likelier_text() {
        let members = [
            generated("yes", -1.0),
            generated("no", -0.2),
            generated("yes", -1.5),
        ];
        let v = combine(Combine::Vote, &[], &members).unwrap();
        assert_eq!((v.answer.as_str(), v.votes), ("yes", 2));
        // One each: "no" (-0.2) beats "yes" (-1.0).
        let v = combine(Combine::Vote, &[], &members[..2]).unwrap();
        assert_eq!((v.answer.as_str(), v.votes), ("no", 1));
        // Equal sums: the earliest member's answer.
        let tie = [generated("a", -1.0), generated("b", -1.0)];
        assert_eq!(combine(Combine::Vote, &[], &tie).unwrap().answer, "a");
    }

    #[test]
    fn mean_logprob_needs_labels_and_something_must_be_there() {
        let members = [generated("x", -1.0)];
        assert_eq!(
            combine(Combine::MeanLogprob, &[], &members),
            Err(CombineError::MeanWithoutLabels)
        );
        let empty = MemberAnswer {
            text: None,
            logprob: None,
            scores: None,
        };
        assert_eq!(
            combine(Combine::Vote, &[], std::slice::from_ref(&empty)),
            Err(CombineError::Nothing)
        );
        assert_eq!(
            combine(Combine::Vote, &labels(), &[empty]),
            Err(CombineError::Nothing)
        );
    }
}
