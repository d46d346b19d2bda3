"""Eval sets and their scoring: items, gold answers, the strict and official judges, McNemar."""
