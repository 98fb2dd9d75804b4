//! A prompt prefilled in pieces (`Engine::prefill_chunk` continuing from each piece's state) computes what one
//! prefill computes: the same last logits, every position's logits, and a decode state that steps on to the same
//! logits. Both families (pure Mamba2, and a hybrid with attention and MLP layers).

mod common;

use coil_infer::{DecodeDtClamp, WeightDtype};
use common::*;

#[test]
fn prefill_in_pieces_equals_one_prefill() {
    for name in ["mamba2_tiny", "nemotron_h_tiny"] {
        let e = engine(name, WeightDtype::F32, DecodeDtClamp::SameAsPrefill);
        let v = e.vocab_size();
        let prompt: Vec<u32> = (0..45).map(|i| (i * 37 + 11) % v as u32).collect();
        let (whole_last, whole_state) = e.prefill(&prompt, 4).unwrap();
        let (whole_all, _) = e.prefill_chunk(&prompt, None, true).unwrap();
        assert_eq!(whole_all.len(), prompt.len() * v, "{name}");
        // The last row of the all-positions logits is the last-position logits.
        let tol = 1e-4;
        assert!(
            max_abs(&whole_all[(prompt.len() - 1) * v..], &whole_last) < tol,
            "{name}"
        );

        // Pieces of 16, 16 and 13 tokens.
        let mut state = None;
        let mut rows = Vec::new();
        for piece in prompt.chunks(16) {
            let (l, s) = e.prefill_chunk(piece, state.as_ref(), true).unwrap();
            assert_eq!(l.len(), piece.len() * v);
            rows.extend(l);
            state = Some(s);
        }
        let err = max_abs(&rows, &whole_all);
        assert!(err < tol, "{name}: every position's logits differ by {err}");
        let mut pieces = vec![e.seq_state(&state.unwrap(), prompt.len(), 4).unwrap()];
        assert_eq!(pieces[0].position, prompt.len());
        let mut whole = vec![whole_state];
        let mut scratch = e.scratch(1);
        let a = e.step(&mut pieces, &[7], &mut scratch).unwrap().to_vec();
        let b = e.step(&mut whole, &[7], &mut scratch).unwrap().to_vec();
        let err = max_abs(&a, &b);
        assert!(
            err < tol,
            "{name}: the step after the pieces differs by {err}"
        );
        // The error names the bad id.
        let msg = e
            .prefill_chunk(&[1, v as u32], None, false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&v.to_string()), "{msg}");
    }
}
