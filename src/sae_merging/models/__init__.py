"""Models: pools of experts to merge, their files, loading and saving, compatibility checks."""
