"""The plugin contracts: what a model, a dataloader and a processor provide, and the
registries through which the stages find them by name.

- :mod:`bhive.plugins.registry`: registries by class name, and loading a config's ``plugins:``;
- :mod:`bhive.plugins.model`: :class:`~bhive.plugins.model.Model`, its input description
  :class:`~bhive.plugins.model.InputSpec` and :class:`~bhive.plugins.model.TrainingSettings`,
  and the artifact description (``model.json``);
- :mod:`bhive.plugins.dataloader`: :class:`~bhive.plugins.dataloader.DataLoaderPlugin` and
  :class:`~bhive.plugins.dataloader.LoaderSettings`;
- :mod:`bhive.plugins.processor`: :class:`~bhive.plugins.processor.JetProcessor`, the coffea
  processor base (ROOT chunk in, dataset piece out).

Plugin authors import them from the familiar places, ``models.base``, ``dataloaders.base``
and ``processors.base``, which re-export them. The stages in ``bhive`` never import a plugin
package: the tasks import the shipped plugins and the modules a config lists under
``plugins:``, and the stages look classes up by name.
"""
