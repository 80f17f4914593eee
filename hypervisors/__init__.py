"""vmkeep.hypervisors"""
