"""The one operator-command path: what an operator may ask of a running station, checked and executed the
same way whether the command came on stdin (``reedge run --commands stdin``) or over MQTT.

A transport (``edge.app.stdin_commands``, ``edge.telemetry.commands``) turns what it received into a
``Command`` (verb, arguments, who asked) and hands it to ``Operator.execute``; it gets back an ``Answer``
(``ok`` or a refusal with its code and reason) and leaves the ``AuditRecord`` where its readers look
(the journal line, the ``event`` stream). Who may send what, ids, replays and replies are the
transport's business; what a verb does and when it is refused is decided here, once.

======================  ==============================================  ====================================
verb                    arguments                                       refused when
======================  ==============================================  ====================================
``start``               recipe, recipe_sha256, batch_id; operator,      interlocks tripped; no such recipe;
                        feed, mass_in_kg                                another file; it does not load;
                                                                        a batch runs (``Controller``)
``hold``                reason                                          no batch is running
``resume``              (none)                                          no batch is running; not held
``abort``               reason                                          no batch is running
``skip``                (none)                                          no batch is running
``ack_alarm``           alarm                                           no such alarm; nothing to acknowledge
``reset``               rule                                            the station does not allow a reset
                                                                        from a command; no such interlock;
                                                                        the condition persists (the core)
``record_mass``         mass_out_kg; batch_id (default: the current)    not the current batch record
======================  ==============================================  ====================================
"""
