"""The linear probe against a re-statement of the official procedure (KaiyangZhou/CoOp ``lpclip/``), in fp32.

The reference search is ``linear_probe.py``'s, written out: scikit-learn ``LogisticRegression(solver="lbfgs",
max_iter=1000, penalty="l2", C=c)`` (L2: the default) over the grid 1e6 ... 1e-6 scored on the validation features,
then ``num_step`` calls of its ``binary_search`` (the interval kept in log10 between steps, the left end on ties),
the last step's classifier kept; the features are ``clip.visual``'s raw output (``feat_extractor.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from dapt_lightning.methods import LinearProbe
from dapt_lightning.methods.linear_probe import OFFICIAL_C_GRID, ProbeSearch


def official_search(train_x, train_y, val_x, val_y, num_step: int) -> tuple[float, LogisticRegression]:
    def fit(c: float) -> LogisticRegression:
        # penalty="l2" upstream: scikit-learn's default (passing it is deprecated since 1.8)
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(train_x, train_y)

    def accuracy(clf: LogisticRegression) -> float:
        return sum(clf.predict(val_x) == val_y) / len(val_y)

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [accuracy(fit(c)) for c in search_list]
    c_peak = search_list[np.argmax(acc_list)]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final, clf_final = c_peak, None
    for _ in range(num_step):
        clf_left, clf_right = fit(c_left), fit(c_right)
        if accuracy(clf_left) < accuracy(clf_right):
            c_final, clf_final = c_right, clf_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final


def features(classes: int, per_class: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + 2.5 * rng.normal(size=(len(labels), dim))).astype(np.float32), labels


@pytest.mark.parametrize("classes", [2, 5])
def test_the_search_picks_the_official_c_and_classifier(classes: int) -> None:
    train = features(classes, 16, 24, seed=0)
    val = features(classes, 4, 24, seed=1)
    search = ProbeSearch(*train, *val)
    c, classifier = search.run(list(OFFICIAL_C_GRID), steps=8)
    expected_c, expected = official_search(*train, *val, num_step=8)
    assert c == expected_c and search.fits == 7 + 2 * 8
    # The same fit up to L-BFGS's last bits (BLAS sums depend on memory alignment, so fits are not bitwise repeatable)
    np.testing.assert_allclose(classifier.coef_, expected.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(classifier.intercept_, expected.intercept_, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(classifier.predict(val[0]), expected.predict(val[0]))
    assert search.last_accuracy == sum(expected.predict(val[0]) == val[1]) / len(val[1])


@pytest.mark.parametrize("classes", [2, 5])
def test_the_logits_are_the_classifiers_decision_on_raw_features(clip_file, classes: int) -> None:
    clip, path = clip_file
    names = [f"class {i}" for i in range(classes)]
    method = LinearProbe(classnames=names, clip_name="dapt-tiny", pretrained=str(path))
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(12, 3, 64, 64, generator=generator)
    with torch.no_grad():
        raw = clip.visual(images)  # feat_extractor.py: not normalised
    labels = np.arange(12) % classes
    classifier = LogisticRegression(solver="lbfgs", max_iter=1000, C=1.0).fit(raw.numpy(), labels)
    method.set_classifier(classifier.coef_, classifier.intercept_, classes)

    logits, image_features, _ = method.forward_features(images)
    decision = torch.as_tensor(classifier.decision_function(raw.numpy()), dtype=torch.float32)
    if classes == 2:  # scikit-learn's one score is logit 1 - logit 0
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], decision, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(logits, decision, rtol=1e-5, atol=1e-5 * decision.abs().max().item())
    assert logits.argmax(-1).tolist() == classifier.predict(raw.numpy()).tolist()
    probabilities = torch.as_tensor(classifier.predict_proba(raw.numpy()), dtype=torch.float32)
    torch.testing.assert_close(logits.softmax(-1), probabilities, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(image_features, torch.nn.functional.normalize(raw, dim=-1), rtol=1e-5, atol=1e-6)


def test_bad_settings_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="--model.c_grid must be values > 0"):
        LinearProbe(c_grid=[1.0, -1.0])
    with pytest.raises(ValueError, match="--model.search_steps must be >= 0"):
        LinearProbe(search_steps=-1)
