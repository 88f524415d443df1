"""Measurements on a real device: memory, time, batch sweeps."""
