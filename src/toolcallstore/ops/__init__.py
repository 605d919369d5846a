"""Operating a deployment: doctor, database copy, backup and restore."""
