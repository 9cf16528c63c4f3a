"""PER, EER, accuracy and greedy CTC decoding against hand-computed examples."""
import pytest

from fairseq_plugins.evaluate.metrics import accuracy, ctc_greedy_decode, det_curve, eer, per


def test_per_is_corpus_level_edits_over_reference_length():
    refs = [["a", "b", "c", "d"], ["e", "f"]]
    hyps = [["a", "x", "c"], ["e", "f", "g"]]
    # utt 1: substitute b->x, delete d = 2 edits; utt 2: insert g = 1 edit; 3 / 6 reference phones
    assert per(hyps, refs) == pytest.approx(0.5)
    # not the mean of utterance rates (2/4 and 1/2 would also give 0.5, so check an unequal case)
    assert per([["a"], []], [["a"], ["b", "c", "d"]]) == pytest.approx(3 / 4)


def test_per_perfect_and_above_one():
    assert per([["a", "b"]], [["a", "b"]]) == 0.0
    assert per([["x", "y", "z", "w"]], [["a"]]) == pytest.approx(4.0)  # 1 substitution + 3 insertions


def test_per_rejects_bad_input():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        per([["a"], ["b"]], [["a"]])
    with pytest.raises(ValueError, match="all empty"):
        per([["a"]], [[]])


def test_eer_perfect_separation_and_inverted():
    assert eer([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 0.0
    assert eer([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0


def test_eer_hand_computed_crossing_at_an_operating_point():
    # targets 0.8, 0.4; non-targets 0.6, 0.2. Threshold 0.6: FAR = 1/2 (0.6), FRR = 1/2 (0.4) -> EER 0.5
    assert eer([0.8, 0.4, 0.6, 0.2], [1, 1, 0, 0]) == pytest.approx(0.5)


def test_eer_hand_computed_interpolated():
    # targets 0.9 0.7 0.5 0.3 ; non-targets 0.6 0.2 0.1 0.05
    # operating points (FAR, FRR): (0,1) (0,.75)@.9 (0,.5)@.7 (.25,.5)@.6 (.25,.25)@.5 ...
    # FRR - FAR: 0.25 at (.25,.5), 0 at (.25,.25) -> crossing exactly at FAR = FRR = 0.25
    assert eer([0.9, 0.7, 0.5, 0.3, 0.6, 0.2, 0.1, 0.05], [1, 1, 1, 1, 0, 0, 0, 0]) == pytest.approx(0.25)
    # targets 0.9 0.5 0.3 ; non-targets 0.6 0.2: points (0,1) (0,2/3) (.5,2/3) (.5,1/3) (.5,0)... -> the
    # segment (.5,2/3)->(.5,1/3) crosses FRR = FAR halfway: EER = 0.5
    assert eer([0.9, 0.5, 0.3, 0.6, 0.2], [1, 1, 1, 0, 0]) == pytest.approx(0.5)
    # one target 0.7, non-targets 0.9 0.5 0.1: points (0,1) (1/3,1) (1/3,0) -> segment from d=2/3 to
    # d=-1/3: FAR stays 1/3 -> EER 1/3
    assert eer([0.7, 0.9, 0.5, 0.1], [1, 0, 0, 0]) == pytest.approx(1 / 3)


def test_eer_ties_are_one_operating_point():
    # a target and a non-target with the same score: points (0,1) -> (1,0): the diagonal crosses at 0.5
    assert eer([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    # tie between target 0.7 and non-target 0.7, plus a clean pair: points (0,1) (0,.5)@.9 (.5,0)@.7 (1,0)
    # FRR - FAR: .5 -> -.5 between (0,.5) and (.5,0): crossing halfway, FAR = .25
    assert eer([0.9, 0.7, 0.7, 0.1], [1, 1, 0, 0]) == pytest.approx(0.25)
    # targets .9 .7 .7, non-targets .7 .1: points (0,1) (0,2/3)@.9 (1/2,0)@.7 (1,0); FRR - FAR goes 2/3 -> -1/2,
    # crossing at a = (2/3) / (7/6) = 4/7 of the segment: FAR = FRR = 4/7 * 1/2 = 2/7
    assert eer([0.9, 0.7, 0.7, 0.7, 0.1], [1, 1, 1, 0, 0]) == pytest.approx(2 / 7)


def test_det_curve_points():
    far, frr = det_curve([0.9, 0.6, 0.5, 0.2], [1, 0, 1, 0])
    assert far.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert frr.tolist() == [1.0, 0.5, 0.5, 0.0, 0.0]


def test_eer_rejects_one_class_and_bad_labels():
    with pytest.raises(ValueError, match="0 non-target"):
        eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        eer([0.1, 0.2], [1, 2])


def test_accuracy_and_ctc_decode():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
    assert ctc_greedy_decode([0, 3, 3, 0, 3, 5, 5, 0]) == [3, 3, 5]
    assert ctc_greedy_decode([0, 0, 0]) == []
