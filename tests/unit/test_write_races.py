"""MLflow answers 400 when two writers insert the same new tag at once (an IntegrityError from
its database): the row exists afterwards, so the write is retried, not dead-lettered; any other
400 stays a request error."""

from __future__ import annotations

import json

import pytest
import requests

from shared.errors import MlflowRequestError, MlflowUnavailable
from worker.rest import RestClient, Service


def answer(status: int, message: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    return response


CLIENT = RestClient(Service(name="MLflow", base_url="http://mlflow"))


@pytest.mark.parametrize(
    "message",
    [
        "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_tags.workspace, "
        "registered_model_tags.key, registered_model_tags.name",
        "(psycopg2.errors.UniqueViolation) IntegrityError: duplicate key value violates unique "
        'constraint "registered_model_tag_pk"',
    ],
)
def test_a_tag_write_race_is_retried(message: str) -> None:
    error = CLIENT._error(answer(400, message), "POST", "/api/2.0/mlflow/registered-models/set-tag")
    assert isinstance(error, MlflowUnavailable)
    assert "raced" in str(error)


def test_another_bad_request_is_not_retried() -> None:
    error = CLIENT._error(answer(400, "Invalid value for tag key"), "POST", "/x")
    assert isinstance(error, MlflowRequestError)
