"""Admission webhook: the pure mutation planner, the aiohttp shell, and registration."""
