"""vmkeep.agent"""
