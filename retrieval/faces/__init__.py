"""What users touch: the `retrieve` command, the HTTP service and its page, the pictures
(`query --show`) and the evaluation report. They call the public API and hold no logic."""
