'use strict'
// Method decorators `@cached(cache, options?)` and `@rateLimited(limiter, options?)`.
// One function serves both decorator protocols:
//   TC39 standard (TypeScript 5+ default): decorator(method, context) returns the replacement;
//   legacy experimentalDecorators (NestJS): decorator(target, propertyKey, descriptor) edits the descriptor.
// The replacement keeps `this`: it calls the method, and the key / ttlMs /
// tags / cost functions and a cache or limiter thunk, with the instance.
// The default key prefix (and limiter key) is `Class.method`.

const { invalidArg, show } = require('./errors')
const { compileCacheOptions, callCached, compileLimitOptions, callLimited } = require('./wrap')

function checkSource(source, what, method) {
  if (typeof source === 'function') return
  if (source === null || typeof source !== 'object' || typeof source[method] !== 'function') {
    throw invalidArg(`${what} must be a ${what === 'cache' ? 'CacheManager' : 'RateLimiter'} or a function returning one, got ${show(source)}`)
  }
}

function resolveSource(source, thisArg, what, method) {
  if (typeof source !== 'function') return source
  const s = source.call(thisArg)
  if (s === null || typeof s !== 'object' || typeof s[method] !== 'function') {
    throw invalidArg(`the ${what} function returned ${show(s)}, not a ${what === 'cache' ? 'CacheManager' : 'RateLimiter'}`)
  }
  return s
}

function memberName(name) {
  return typeof name === 'symbol' ? `[${name.description ?? ''}]` : String(name)
}

// The class that owns `replacement` as `name`: the nearest object on `this`'s
// prototype chain that has it as an own property (so a subclass instance
// still gets the declaring class's name, as a legacy decorator's target does).
function ownerName(thisArg, name, replacement) {
  for (let o = thisArg; o !== null && o !== undefined; o = Object.getPrototypeOf(o)) {
    const d = Object.getOwnPropertyDescriptor(o, name)
    if (d !== undefined && d.value === replacement) return typeof o === 'function' ? o.name : o.constructor?.name
  }
  return undefined
}

function className(target) {
  return typeof target === 'function' ? target.name : target?.constructor?.name
}

/**
 * Makes a decorator for both protocols from `build(method, owner)`, which
 * returns the replacement; `owner(this)` is the default name `Class.method`
 * (known at once for a legacy decorator, found from `this` for a standard
 * one). `named`: the options give the key, so no default name is needed.
 */
function decorator(what, named, build) {
  return function hotpathDecorator(value, context, descriptor) {
    if (context !== null && typeof context === 'object' && typeof context.kind === 'string') {
      if (context.kind !== 'method') throw invalidArg(`@${what} decorates methods, not a ${context.kind}`)
      if (typeof value !== 'function') throw invalidArg(`@${what} decorates methods, got ${show(value)}`)
      const name = context.name
      if (context.private && !named) {
        throw invalidArg(`@${what} on the private method ${String(name)} needs options.${what === 'cached' ? 'prefix or options.key' : 'key'}: its class cannot be found from the instance`)
      }
      let cached
      let replacement
      const owner = (thisArg) => {
        if (cached !== undefined) return cached
        const cls = ownerName(thisArg, name, replacement)
        const member = memberName(name)
        const full = cls ? `${cls}.${member}` : member
        if (cls !== undefined) cached = full
        return full
      }
      replacement = build(value, owner)
      return replacement
    }
    if (descriptor === null || typeof descriptor !== 'object' || typeof descriptor.value !== 'function') {
      throw invalidArg(`@${what} decorates methods, got ${show(descriptor?.value ?? descriptor)} as ${memberName(context)}`)
    }
    const cls = className(value)
    const member = memberName(context)
    const full = cls ? `${cls}.${member}` : member
    descriptor.value = build(descriptor.value, () => full)
    return descriptor
  }
}

/** `@cached(cache, options?)`: memoize a method through `cache.getOrSet` (see cache.wrap). */
function cached(cache, options) {
  checkSource(cache, 'cache', 'getOrSet')
  const spec = compileCacheOptions(options, '@cached')
  return decorator('cached', spec.prefix !== undefined || spec.key !== undefined, (method, owner) =>
    function cachedMethod(...args) {
      let c
      try {
        c = resolveSource(cache, this, 'cache', 'getOrSet')
      } catch (err) {
        return Promise.reject(err)
      }
      return callCached(c, spec, spec.prefix ?? owner(this), method, this, args)
    },
  )
}

/** `@rateLimited(limiter, options?)`: check the limit before each call (see limiter.wrap). */
function rateLimited(limiter, options) {
  checkSource(limiter, 'limiter', 'check')
  const spec = compileLimitOptions(options, '@rateLimited')
  return decorator('rateLimited', spec.key !== undefined, (method, owner) =>
    function rateLimitedMethod(...args) {
      let l
      try {
        l = resolveSource(limiter, this, 'limiter', 'check')
      } catch (err) {
        return Promise.reject(err)
      }
      return callLimited(l, spec, spec.key === undefined ? owner(this) : undefined, method, this, args)
    },
  )
}

module.exports = { cached, rateLimited }
