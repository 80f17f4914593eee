"""vmkeep.repository"""
