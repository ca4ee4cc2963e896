"""Randomized SIGKILL trials in CI (scripts/crash_trials.py runs hundreds)."""

from tests.crashtrial import run_trials


def test_randomized_sigkill_trials_lose_nothing(tmp_path):
    result = run_trials(str(tmp_path), trials=12, seed=2026)  # crash states at the layer: test_reference_model.py
    print(f"{result.trials} trials, {result.recorded_files} recorded files, "
          f"{len(result.lost_files)} lost, {len(result.lake_problems)} lake problems")
    assert result.recorded_files > 20, "the writer recorded too few files for the trials to mean much"
    assert result.lost_files == []
    assert result.lake_problems == []


def test_randomized_sigkill_trials_on_s3(tmp_path, s3_url):
    url, endpoint = s3_url
    result = run_trials(str(tmp_path), trials=6, seed=7, store_url=url, extra=["--endpoint-url", endpoint])
    assert result.recorded_files > 5
    assert result.lost_files == []
    assert result.lake_problems == []
