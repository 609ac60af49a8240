"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.st_hooks) for the run against `retrieve
serve`: the photos of /query and /enroll, which the schema says are image files (binary parts
of the image media types), are drawn as real image files of each of those types
(tests/fuzz/images.py) instead of arbitrary bytes, so that schema-valid requests are image
uploads.

Two corrections of Schemathesis 4.32 itself, for the multipart bodies whose parts have
media-type strategies (they touch schema-valid cases only): it draws one value, not an array,
for an array property (the photos of /enroll), which it then sends without a file name; and its
coverage phase sends an empty string for the body's other required fields (the label), which
the schema requires to be 1 to 200 characters."""

from __future__ import annotations

import schemathesis

from tests.fuzz.images import FORMATS, image_files

for media_type in FORMATS:
    schemathesis.openapi.media_type(media_type, image_files(media_type))


@schemathesis.hook
def map_case(context, case):
    body = case.body
    positive = case.meta is None or case.meta.generation.mode.is_positive
    if positive and isinstance(body, dict) and "files" in body:
        if not isinstance(body["files"], list):
            body["files"] = [body["files"]]
        if body.get("label") == "":
            body["label"] = "fuzzed label"
    return case
