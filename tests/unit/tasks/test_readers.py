"""Sampling the rows of data files, which are often sorted by label."""

from __future__ import annotations

from nlpkit.tasks.readers import seeded_sample


def test_a_sample_of_a_label_sorted_file_holds_both_labels_and_repeats_with_its_seed():
    rows = ["negative"] * 500 + ["positive"] * 500
    drawn = seeded_sample(rows, 100, seed=0)
    assert len(drawn) == 100 and 30 < drawn.count("positive") < 70  # a prefix would hold no positive row
    assert seeded_sample(rows, 100, seed=0) == drawn != seeded_sample(rows, 100, seed=1)


def test_without_a_limit_or_with_one_past_the_end_every_row_stays_in_order():
    rows = list(range(10))
    assert seeded_sample(rows, None, seed=0) == rows == seeded_sample(rows, 10, seed=0) == seeded_sample(rows, 99, 0)
