"""The examples run end to end (--quick), write non-blank figures and fit at least as well as the
truth (up to a margin)."""

import pytest

from tests.example_runner import assert_figure, load_example, printed_loglik

# example, figures it writes, label of its printed fit, labels of other fits that must agree, text
CASES = [
    ("quickstart", ["fit_and_gates.png", "trace.png"], "MAP", [], ["divergences: 0"]),
    ("classification_modified_softmax", ["fit_and_gates.png", "rank.png"], "MAP", [],
     ["r_hat", "gate_coef"]),
    ("gaussian_gated", ["fit_and_gates.png", "trace.png"], "MLE (lbfgs)", ["MLE (em)   "],
     ["elpd_loo", "expert_scale"]),
]


@pytest.mark.parametrize("name,figures,label,others,texts", CASES, ids=[c[0] for c in CASES])
def test_example(name, figures, label, others, texts, tmp_path, capsys):
    load_example(name).main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    for fig in figures:
        assert_figure(tmp_path / fig)
    fitted, truth = printed_loglik(out, label)
    assert fitted >= truth - 5, (fitted, truth)
    for other in others:  # e.g. EM and L-BFGS reach the same maximum
        value, _ = printed_loglik(out, other)
        assert abs(value - fitted) < 1e-2 * abs(fitted) + 0.5, (other, value, fitted)
    for text in texts:
        assert text in out
