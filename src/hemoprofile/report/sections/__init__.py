"""The report's sections, one module each, named by the section's id; each has ``render(ctx) -> str``
(the section's HTML body, a :class:`~hemoprofile.report.inputs.ReportContext` in): :mod:`.summary`,
:mod:`.qc`, :mod:`.composition`, :mod:`.classifiers`, :mod:`.latent`, :mod:`.rare_events`,
:mod:`.patients`, :mod:`.importances`. Their order on the page is
:data:`hemoprofile.report.build.SECTIONS`."""
