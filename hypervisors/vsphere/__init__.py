"""vSphere: pyVmomi, changed block tracking and the datastore HTTP transport."""
