"""LangGraph workflows."""
