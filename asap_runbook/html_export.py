"""nbconvert's HTMLExporter without its BeautifulSoup pass.

HTMLExporter.from_notebook_node renders the template, then re-parses the whole page with
BeautifulSoup's pure-Python html.parser only to add `alt` to images without one and
`tabindex="0"` to input and output areas; on a fleet's section page (hundreds of findings) that
pass is ~70% of the render time. This exporter renders the same template and makes the same
two touch-ups on the markup nbconvert's own templates generate, with regular expressions.
If nbconvert's internals change shape, it falls back to the stock exporter.
"""

from __future__ import annotations

import re

from nbconvert import HTMLExporter
from nbconvert.exporters.templateexporter import TemplateExporter

_IMG_WITHOUT_ALT = re.compile(r"<img(?![^>]*\salt=)", re.I)
_FOCUSABLE = re.compile(r'<div class="([^"]*\b(?:jp-OutputArea-output|jp-Cell-inputWrapper)\b[^"]*)"(?![^>]*tabindex)')


def touch_up(html: str) -> str:
    html = _IMG_WITHOUT_ALT.sub('<img alt="No description has been provided for this image"', html)
    return _FOCUSABLE.sub(r'<div class="\1" tabindex="0"', html)


class LeanHTMLExporter(HTMLExporter):
    def from_notebook_node(self, nb, resources=None, **kw):
        try:
            from nbconvert.filters.highlight import Highlight2HTML
            from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter
            langinfo = nb.metadata.get("language_info", {})
            lexer = langinfo.get("pygments_lexer", langinfo.get("name", None))
            self.register_filter("highlight_code",
                                 self.filters.get("highlight_code", Highlight2HTML(pygments_lexer=lexer, parent=self)))
            resources = self._init_resources(resources)
            self.register_filter("filter_data_type", WidgetsDataTypeFilter(
                notebook_metadata=self._nb_metadata, parent=self, resources=resources))
        except (ImportError, AttributeError, TypeError):  # nbconvert changed: the stock path still works
            return super().from_notebook_node(nb, resources, **kw)
        html, resources = TemplateExporter.from_notebook_node(self, nb, resources, **kw)
        return touch_up(html), resources
