"""The evaluation cache table: JSON rows per (configuration id, example hash), read in chunks, replaced
on conflict, counted, cleared by prefix and purged by age; through StoredCache, CachedResult round trips."""

from __future__ import annotations

import datetime as dt

from dspex.optimize.cache import CachedResult, StoredCache
from dspex.store import open_database
from dspex.store.evalcache import EvaluationCacheRepository


def test_rows_round_trip_replace_count_clear_and_purge(database_url: str) -> None:
    db = open_database(database_url)
    repo = EvaluationCacheRepository(db)
    rows = {
        (f"dspy:c{i % 3}", f"e{i}"): {"v": 1, "prediction": {"answer": str(i)}, "scores": {}}
        for i in range(1200)
    }
    repo.put_many(rows)
    keys = [*rows, ("dspy:c9", "missing")]
    found = repo.get_many(keys)  # more keys than one SELECT takes: read in chunks
    assert found == rows
    repo.put_many({("dspy:c0", "e0"): {"v": 1, "prediction": {"answer": "new"}, "scores": {"em": 1.0}}})
    assert repo.get(("dspy:c0", "e0")) == {"v": 1, "prediction": {"answer": "new"}, "scores": {"em": 1.0}}
    assert repo.count() == 1200
    assert repo.count("dspy:c1") == 400
    assert repo.count("dspy:c_") == 0  # the prefix is literal, not a LIKE pattern
    assert repo.clear("dspy:c2") == 400
    assert repo.count() == 800
    assert repo.purge(dt.datetime.now(dt.UTC) - dt.timedelta(days=1)) == 0
    assert repo.purge(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)) == 800
    assert repo.get_many([]) == {}
    db.dispose()


def test_stored_cache_keeps_predictions_scores_feedback_and_traces(database_url: str) -> None:
    db = open_database(database_url)
    cache = StoredCache(EvaluationCacheRepository(db))
    trace = ({"predictor": "predict", "inputs": {"question": "2+2?"}, "outputs": {"answer": "4"}},)
    entry = CachedResult({"answer": "4"}, {"em": 1.0}, {"em": "right"}, 12.5, trace)
    plain = CachedResult({"answer": "5"}, {"em": 0.0})
    cache.put_many({("cfg", "a"): entry, ("cfg", "b"): plain})
    assert cache.get_many([("cfg", "a"), ("cfg", "b"), ("cfg", "c")]) == {
        ("cfg", "a"): entry,
        ("cfg", "b"): plain,
    }
    db.dispose()
