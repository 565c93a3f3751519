"""On-site commands that learn from a machine's own normal sound: calibrate (a threshold
for a false-alarm rate) and enroll (a general bundle's reference bank)."""
