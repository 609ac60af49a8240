"""Metric learning and its measures: P×K sampling, miners, losses, the training loop, and the
retrieval metrics (Recall@K, MAP@R, enrolment accuracy) it and `retrieve evaluate` report."""
