"""The examples run end to end (--quick), write non-blank figures and fit at least as well as the
truth (up to a margin)."""

from tests.example_runner import assert_figure, load_example, printed_loglik


def test_quickstart(tmp_path, capsys):
    load_example("quickstart").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert_figure(tmp_path / "fit_and_gates.png")
    assert_figure(tmp_path / "trace.png")
    fitted, truth = printed_loglik(out, "MAP")
    assert fitted >= truth - 5, (fitted, truth)
    assert "divergences: 0" in out


def test_classification_modified_softmax(tmp_path, capsys):
    load_example("classification_modified_softmax").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert_figure(tmp_path / "fit_and_gates.png")
    assert_figure(tmp_path / "rank.png")
    fitted, truth = printed_loglik(out, "MAP")
    assert fitted >= truth - 5, (fitted, truth)
    assert "r_hat" in out and "gate_coef" in out


def test_gaussian_gated(tmp_path, capsys):
    load_example("gaussian_gated").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert_figure(tmp_path / "fit_and_gates.png")
    assert_figure(tmp_path / "trace.png")
    fitted, truth = printed_loglik(out, "MLE (lbfgs)")
    assert fitted >= truth - 5, (fitted, truth)
    em, _ = printed_loglik(out, "MLE (em)   ")
    assert em >= truth - 5 and abs(em - fitted) < 1e-2 * abs(fitted) + 0.5, (em, fitted)
    assert "elpd_loo" in out and "expert_scale" in out
