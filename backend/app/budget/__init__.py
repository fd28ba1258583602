"""The connection budget: model (from settings), start-up guard, live audit, and the CLI.

python -m app.budget --environment development|production   # the guide's tables, from the code
python -m app.budget --suggest                               # pool sizes that fit the allocation
python -m app.budget --audit                                 # what pg_stat_activity shows, by service
"""
