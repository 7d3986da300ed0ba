"""Issue 13: reports are written with an explicit MongoDB write concern (majority, journaled), configurable."""

import pymongo.errors
import pytest

from worker import clients
from worker.checks import SettingsError
from worker.settings import load


def store_for(env: dict, **overrides):
    return clients.store(load(environ={**env, **overrides}))


def test_reports_are_written_majority_and_journaled_by_default(env, db):
    store = store_for(env)
    try:
        assert store.reports.write_concern.document == {"w": "majority", "j": True}
        store.reports.insert_one({"request_id": "wc-default"})   # the server accepts what it is asked
        assert db.medical_reports.count_documents({"request_id": "wc-default"}) == 1
    finally:
        store.close()


def test_the_write_concern_is_configurable_and_reaches_the_server(env, db):
    store = store_for(env, MONGODB_WRITE_CONCERN="1", MONGODB_JOURNAL="false")
    try:
        assert store.reports.write_concern.document == {"w": 1, "j": False}
    finally:
        store.close()
    store = store_for(env, MONGODB_WRITE_CONCERN="5")      # more members than the test server has
    try:
        with pytest.raises(pymongo.errors.WriteConcernError) as refused:
            store.reports.insert_one({"request_id": "wc-five"})
        assert refused.value.details["errInfo"]["writeConcern"]["w"] == 5
    finally:
        store.close()


@pytest.mark.parametrize("value", ["none", "0", "-1", "all"])
def test_a_write_concern_that_is_not_majority_or_a_count_is_refused_by_name(env, value):
    with pytest.raises(SettingsError, match="MONGODB_WRITE_CONCERN"):
        load(environ={**env, "MONGODB_WRITE_CONCERN": value})
