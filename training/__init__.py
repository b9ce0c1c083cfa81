"""Offline trainer for sfm_ros: data sources, snippets, the SfMLearner objective, the train loop."""
